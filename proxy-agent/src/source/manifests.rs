//! TODO
#[cfg(test)] mod exp { #![allow(clippy::unwrap_used)] use serde::Deserialize; use k8s_openapi::api::core::v1::Service;
#[test]
fn exp() {
    let text = "apiVersion: v1\nkind: Service\nmetadata:\n  name: a\nspec:\n  ports:\n  - port: abc\n---\nfoo: [\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: b\n";
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let v = serde_yaml::Value::deserialize(doc);
        println!("{i}: {:?}", v.as_ref().map(|_| ()).map_err(|e| e.to_string()));
    }
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let v = Service::deserialize(doc);
        println!("{i}: {:?}", v.map(|_| ()).map_err(|e| e.to_string()));
    }
    let t2 = "apiVersion: v1\nkind: Service\nmetadata:\n  name: a\nspec:\n  ports:\n  - port: abc\n";
    let v: serde_yaml::Value = serde_yaml::from_str(t2).unwrap();
    println!("{:?}", serde_yaml::from_value::<Service>(v).map(|_|()).map_err(|e| e.to_string()));
    let t3 = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: a\n";
    println!("{:?}", serde_yaml::from_str::<Service>(t3).map(|_|()).map_err(|e| e.to_string()));
    let t4 = "kind: Service\nmetadata:\n  name: a\n";
    println!("{:?}", serde_yaml::from_str::<Service>(t4).map(|_|()).map_err(|e| e.to_string()));
    let t5 = "{\"apiVersion\": \"v1\",\n\t\"kind\": \"Service\", \"metadata\": {\"name\": \"x\"}, \"spec\": {\"ports\": [{\"port\": \"q\"}]}}";
    println!("{:?}", serde_yaml::from_str::<Service>(t5).map(|_|()).map_err(|e| e.to_string()));
    println!("{:?}", serde_json::from_str::<Service>(t5).map(|_|()).map_err(|e| e.to_string()));
    let t6 = "apiVersion: v1\nkind: Service\nmetadata:\n  name: a\n  creationTimestamp: \"2024-01-01T00:00:00Z\"\nspec:\n  ports:\n  - port: 80\n    targetPort: http\n  - port: 81\n    targetPort: 8080\n  - port: 82\n    targetPort: \"8080\"\n";
    println!("{:?}", serde_yaml::from_str::<Service>(t6).map(|s| format!("{:?} {:?}", s.metadata.creation_timestamp, s.spec.unwrap().ports)).map_err(|e| e.to_string()));
    let t7 = "apiVersion: v1\nkind: Service\nmetadata:\n  name: a\nspec:\n  ports:\n  - port: 80\n    port: 81\n";
    println!("{:?}", serde_yaml::from_str::<Service>(t7).map(|_|()).map_err(|e| e.to_string()));
    println!("{:?}", serde_yaml::Deserializer::from_str("").count());
    println!("{:?}", serde_yaml::Deserializer::from_str("---\n---\na: 1\n").map(|d| serde_yaml::Value::deserialize(d).map_err(|e| e.to_string())).collect::<Vec<_>>());
    println!("{:?}", serde_yaml::Deserializer::from_str("# only comment\n").map(|d| serde_yaml::Value::deserialize(d).map_err(|e| e.to_string())).collect::<Vec<_>>());
}
}
