//! The agent's HTTP endpoints, as kube-proxy serves them: `/metrics` and `/proxyMode`
//! on the metrics address, `/healthz` and `/livez` on the health address.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tracing::info;

use crate::observe::metrics::{Code, Metrics};

/// What the health endpoints report on.
#[derive(Debug)]
pub struct Health {
    /// When a change was noticed that is not applied yet.
    queued: Mutex<Option<SystemTime>>,
    /// When the last sync finished.
    updated: Mutex<Option<SystemTime>>,
    /// The node object is being deleted.
    pub node_deleting: AtomicBool,
    /// How long a queued change may wait before the proxy counts as unhealthy.
    timeout: Duration,
}

impl Health {
    /// Unhealthy when a change waits longer than `timeout`.
    pub fn new(timeout: Duration) -> Arc<Health> {
        Arc::new(Health {
            queued: Mutex::new(None),
            updated: Mutex::new(None),
            node_deleting: AtomicBool::new(false),
            timeout,
        })
    }

    /// A change was noticed.
    pub fn queued(&self) {
        let mut q = self.queued.lock().unwrap_or_else(|e| e.into_inner());
        q.get_or_insert_with(SystemTime::now);
    }

    /// A sync finished: everything queued before it is applied.
    pub fn updated(&self) {
        *self.updated.lock().unwrap_or_else(|e| e.into_inner()) = Some(SystemTime::now());
        *self.queued.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// kube-proxy's `Healthy()`: no change has waited too long (what `/livez` and the
    /// service health checks report).
    pub fn is_healthy(&self) -> bool {
        self.healthy(SystemTime::now())
    }

    fn healthy(&self, now: SystemTime) -> bool {
        let queued = *self.queued.lock().unwrap_or_else(|e| e.into_inner());
        let updated = *self.updated.lock().unwrap_or_else(|e| e.into_inner());
        match (updated, queued) {
            // Not synced even once yet: healthy until the timeout passes.
            (_, Some(q)) => now.duration_since(q).unwrap_or_default() <= self.timeout,
            (Some(_), None) => true,
            (None, None) => true,
        }
    }

    fn body(&self, now: SystemTime, node_eligible: Option<bool>) -> String {
        let updated = *self.updated.lock().unwrap_or_else(|e| e.into_inner());
        let ts = |t: SystemTime| {
            jiff::Timestamp::try_from(t)
                .map(|t| t.to_string())
                .unwrap_or_default()
        };
        let mut v = serde_json::json!({
            "lastUpdated": updated.map(ts).unwrap_or_default(),
            "currentTime": ts(now),
        });
        if let Some(e) = node_eligible {
            v["nodeEligible"] = e.into();
        }
        v.to_string()
    }
}

#[derive(Clone)]
struct Shared {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

/// Binds both servers and serves them on `runtime` (the observers' own, so that they
/// answer while a sync runs); returns the bound addresses (port 0 picks a free port).
/// `/proxyMode` answers `mode`.
pub fn serve(
    runtime: &tokio::runtime::Handle,
    mode: &'static str,
    metrics_addr: SocketAddr,
    health_addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) -> anyhow::Result<(SocketAddr, SocketAddr)> {
    let shared = Shared { metrics, health };
    let m = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/proxyMode", get(move || async move { mode }))
        .with_state(shared.clone());
    let h = Router::new()
        .route("/healthz", get(healthz))
        .route("/livez", get(livez))
        .with_state(shared);
    // Registering a listener needs the runtime it will be served on.
    let _entered = runtime.enter();
    let ml = listener(metrics_addr)?;
    let hl = listener(health_addr)?;
    let (ma, ha) = (ml.local_addr()?, hl.local_addr()?);
    info!(metrics = %ma, health = %ha, "serving metrics and health");
    runtime.spawn(async move { axum::serve(ml, m).await });
    runtime.spawn(async move { axum::serve(hl, h).await });
    Ok((ma, ha))
}

fn listener(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
    l.set_nonblocking(true)?;
    Ok(tokio::net::TcpListener::from_std(l)?)
}

async fn metrics_handler(State(s): State<Shared>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}

async fn healthz(State(s): State<Shared>) -> impl IntoResponse {
    let now = SystemTime::now();
    let eligible = !s.health.node_deleting.load(Ordering::Relaxed);
    let ok = s.health.healthy(now) && eligible;
    answer(&s, ok, s.health.body(now, Some(eligible)), true)
}

async fn livez(State(s): State<Shared>) -> impl IntoResponse {
    let now = SystemTime::now();
    let ok = s.health.healthy(now);
    answer(&s, ok, s.health.body(now, None), false)
}

fn answer(s: &Shared, ok: bool, body: String, healthz: bool) -> impl IntoResponse + use<> {
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let family = if healthz {
        &s.metrics.healthz
    } else {
        &s.metrics.livez
    };
    family
        .get_or_create(&Code {
            code: code.as_u16(),
        })
        .inc();
    (code, [(header::CONTENT_TYPE, "application/json")], body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_waiting_longer_than_the_timeout_is_unhealthy() {
        let h = Health::new(Duration::from_secs(60));
        let t0 = SystemTime::now();
        assert!(h.healthy(t0));
        h.queued();
        assert!(h.healthy(t0 + Duration::from_secs(30)));
        assert!(!h.healthy(t0 + Duration::from_secs(61)));
        h.updated();
        assert!(h.healthy(t0 + Duration::from_secs(61)));
    }

    #[test]
    fn the_body_has_kube_proxy_fields() {
        let h = Health::new(Duration::from_secs(60));
        h.updated();
        let v: serde_json::Value =
            serde_json::from_str(&h.body(SystemTime::now(), Some(true))).unwrap();
        assert!(v["lastUpdated"].as_str().is_some_and(|s| s.ends_with('Z')));
        assert!(v["currentTime"].is_string());
        assert_eq!(v["nodeEligible"], true);
    }
}
