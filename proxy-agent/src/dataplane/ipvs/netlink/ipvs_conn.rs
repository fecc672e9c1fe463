//! An IPVS connection: the family id resolved once, then one call per command, each
//! kernel refusal turned into an [`IpvsError`] naming its service or destination.

use netlink_packet_generic::GenlMessage;
use netlink_sys::protocols::NETLINK_GENERIC;

use super::error::{IpvsError, IpvsObject, NetlinkError};
use super::genl;
use super::ipvs::{
    Command, Destination, DestinationInfo, FAMILY_NAME, IpvsMessage, SCHEDNAME_MAXLEN, Service,
    ServiceId, ServiceInfo, TimeoutConfig, bare_message, dest_message, parse_config, parse_dests,
    parse_services, service_id_message, service_message, set_config_message,
};
use super::socket::{self, Conn, Kernel, Transport};

/// Requests to the kernel's IPVS, in the calling thread's network namespace.
pub struct Ipvs<T = Kernel> {
    conn: Conn<T>,
    family: u16,
}

impl Ipvs<Kernel> {
    /// Opens a generic netlink socket and resolves the "IPVS" family.
    pub fn open() -> Result<Ipvs<Kernel>, IpvsError> {
        let kernel = socket::open(NETLINK_GENERIC, "NETLINK_GENERIC").map_err(|source| {
            IpvsError::Netlink {
                op: "socket",
                object: IpvsObject::All,
                source,
            }
        })?;
        Ipvs::over(kernel)
    }
}

impl<T: Transport> Ipvs<T> {
    /// Resolves the "IPVS" family over `transport`; [`IpvsError::NoIpvs`] when the
    /// module is not loaded.
    pub fn over(transport: T) -> Result<Ipvs<T>, IpvsError> {
        let mut conn = Conn::new(transport);
        let family = genl::resolve(&mut conn, FAMILY_NAME)
            .map_err(|source| IpvsError::Netlink {
                op: "CTRL_CMD_GETFAMILY",
                object: IpvsObject::All,
                source,
            })?
            .ok_or(IpvsError::NoIpvs)?;
        Ok(Ipvs { conn, family })
    }

    /// The resolved family id.
    pub fn family_id(&self) -> u16 {
        self.family
    }

    /// Adds a service; [`IpvsError::Exists`] if it is there.
    pub fn new_service(&mut self, svc: &Service) -> Result<(), IpvsError> {
        self.change_service(Command::NewService, svc)
    }

    /// Changes a service's options; [`IpvsError::NoSuchService`] if it is not there.
    pub fn set_service(&mut self, svc: &Service) -> Result<(), IpvsError> {
        self.change_service(Command::SetService, svc)
    }

    /// Deletes a service and its destinations.
    pub fn del_service(&mut self, id: &ServiceId) -> Result<(), IpvsError> {
        let msg = service_id_message(Command::DelService, id);
        self.ack(msg, service_object(id), None)
    }

    /// One service, `None` if it is not there.
    pub fn service(&mut self, id: &ServiceId) -> Result<Option<ServiceInfo>, IpvsError> {
        let cmd = Command::GetService;
        let object = service_object(id);
        let msg = self.message(service_id_message(cmd, id));
        match self.conn.request(msg, 0) {
            Ok(replies) => {
                let services = parse_services(&replies).map_err(|e| decode(cmd, object, e))?;
                Ok(services.into_iter().find(|s| s.service.id == *id))
            }
            Err(e) => match kernel_error(cmd, object, None, e) {
                IpvsError::NoSuchService { .. } => Ok(None),
                e => Err(e),
            },
        }
    }

    /// Every service with its counters.
    pub fn services(&mut self) -> Result<Vec<ServiceInfo>, IpvsError> {
        let cmd = Command::GetService;
        let msg = self.message(bare_message(cmd));
        let replies = self
            .conn
            .dump(msg)
            .map_err(|e| kernel_error(cmd, IpvsObject::All, None, e))?;
        parse_services(&replies).map_err(|e| decode(cmd, IpvsObject::All, e))
    }

    /// Adds a destination to a service.
    pub fn new_dest(&mut self, id: &ServiceId, dest: &Destination) -> Result<(), IpvsError> {
        self.change_dest(Command::NewDest, id, dest)
    }

    /// Changes a destination's options (its weight, for graceful removal).
    pub fn set_dest(&mut self, id: &ServiceId, dest: &Destination) -> Result<(), IpvsError> {
        self.change_dest(Command::SetDest, id, dest)
    }

    /// Deletes a destination (only its address and port are sent).
    pub fn del_dest(&mut self, id: &ServiceId, dest: &Destination) -> Result<(), IpvsError> {
        self.change_dest(Command::DelDest, id, dest)
    }

    /// A service's destinations with their connection counts and counters.
    pub fn dests(&mut self, id: &ServiceId) -> Result<Vec<DestinationInfo>, IpvsError> {
        let cmd = Command::GetDest;
        let object = service_object(id);
        let msg = self.message(service_id_message(cmd, id));
        let replies = self
            .conn
            .dump(msg)
            .map_err(|e| kernel_error(cmd, object.clone(), None, e))?;
        parse_dests(&replies, id.addr).map_err(|e| decode(cmd, object, e))
    }

    /// Deletes every service of the namespace.
    pub fn flush(&mut self) -> Result<(), IpvsError> {
        let msg = bare_message(Command::Flush);
        self.ack(msg, IpvsObject::All, None)
    }

    /// The connection timeouts (`ipvsadm -L --timeout`).
    pub fn timeouts(&mut self) -> Result<TimeoutConfig, IpvsError> {
        let cmd = Command::GetConfig;
        let msg = self.message(bare_message(cmd));
        let replies = self
            .conn
            .request(msg, 0)
            .map_err(|e| kernel_error(cmd, IpvsObject::Timeouts, None, e))?;
        parse_config(&replies).map_err(|e| decode(cmd, IpvsObject::Timeouts, e))
    }

    /// Sets the timeouts given (`ipvsadm --set`); the others stay as they are. The
    /// kernel refuses (`EINVAL`) one over `INT_MAX / HZ` seconds.
    pub fn set_timeouts(&mut self, timeouts: &TimeoutConfig) -> Result<(), IpvsError> {
        if timeouts.is_empty() {
            return Ok(());
        }
        self.ack(set_config_message(timeouts), IpvsObject::Timeouts, None)
    }

    fn change_service(&mut self, cmd: Command, svc: &Service) -> Result<(), IpvsError> {
        let object = service_object(&svc.id);
        if svc.scheduler.is_empty() || svc.scheduler.len() >= SCHEDNAME_MAXLEN {
            return Err(IpvsError::Invalid {
                object,
                reason: format!(
                    "scheduler name {:?} must have 1 to {} bytes",
                    svc.scheduler,
                    SCHEDNAME_MAXLEN - 1
                ),
            });
        }
        self.ack(service_message(cmd, svc), object, Some(&svc.scheduler))
    }

    fn change_dest(
        &mut self,
        cmd: Command,
        id: &ServiceId,
        dest: &Destination,
    ) -> Result<(), IpvsError> {
        let object = IpvsObject::Destination {
            service: id.to_string(),
            destination: std::net::SocketAddr::new(dest.addr, dest.port).to_string(),
        };
        self.ack(dest_message(cmd, id, dest), object, None)
    }

    fn ack(
        &mut self,
        msg: IpvsMessage,
        object: IpvsObject,
        scheduler: Option<&str>,
    ) -> Result<(), IpvsError> {
        let cmd = msg.cmd;
        let msg = self.message(msg);
        self.conn
            .request(msg, 0)
            .map(drop)
            .map_err(|e| kernel_error(cmd, object, scheduler, e))
    }

    fn message(&self, msg: IpvsMessage) -> GenlMessage<IpvsMessage> {
        let mut msg = GenlMessage::from_payload(msg);
        msg.set_resolved_family_id(self.family);
        msg
    }
}

fn service_object(id: &ServiceId) -> IpvsObject {
    IpvsObject::Service(id.to_string())
}

fn decode(cmd: Command, object: IpvsObject, e: netlink_packet_core::DecodeError) -> IpvsError {
    IpvsError::Netlink {
        op: cmd.name(),
        object,
        source: NetlinkError::Decode(e),
    }
}

/// Gives a kernel errno its meaning for `cmd`: the same `ENOENT` is a missing
/// destination for a destination command and a missing scheduler for a service one.
pub fn kernel_error(
    cmd: Command,
    object: IpvsObject,
    scheduler: Option<&str>,
    e: NetlinkError,
) -> IpvsError {
    let NetlinkError::Kernel { errno } = e else {
        return IpvsError::Netlink {
            op: cmd.name(),
            object,
            source: e,
        };
    };
    let dest_cmd = matches!(cmd, Command::NewDest | Command::SetDest | Command::DelDest);
    match errno {
        libc::EEXIST if matches!(cmd, Command::NewService | Command::NewDest) => {
            IpvsError::Exists { object }
        }
        libc::ESRCH => IpvsError::NoSuchService { object },
        libc::ENOENT if dest_cmd => IpvsError::NoSuchDestination { object },
        libc::ENOENT if scheduler.is_some() => IpvsError::NoScheduler {
            object,
            scheduler: scheduler.unwrap_or_default().to_owned(),
        },
        errno => IpvsError::Kernel {
            op: cmd.name(),
            object,
            errno,
        },
    }
}
