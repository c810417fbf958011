//! The published JSON Schema and the validator know the same fields, section by section.

use std::collections::BTreeSet;

use serde_json::Value;
use tether_spec::validate as v;

fn props(schema: &Value, pointer: &str) -> BTreeSet<String> {
    let node = schema
        .pointer(pointer)
        .unwrap_or_else(|| panic!("schema has no {pointer}"));
    node["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("{pointer} has no properties"))
        .keys()
        .cloned()
        .collect()
}

fn set(fields: &[&str]) -> BTreeSet<String> {
    fields.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn schema_and_validator_agree_on_every_section() {
    let schema: Value = serde_json::from_str(tether_spec::SCHEMA).unwrap();
    let sections: &[(&str, &[&str])] = &[
        ("", v::TOP_FIELDS),
        ("/$defs/sidecar", v::SIDECAR_FIELDS),
        ("/$defs/interface", v::INTERFACE_FIELDS),
        ("/$defs/sidecarReadiness", v::READINESS_FIELDS),
        ("/$defs/sidecarHealth", v::SIDECAR_HEALTH_FIELDS),
        ("/$defs/secret", v::SECRET_FIELDS),
        ("/$defs/resources", v::RESOURCES_FIELDS),
        ("/$defs/workload", v::WORKLOAD_FIELDS),
        ("/$defs/init", v::INIT_FIELDS),
        ("/$defs/step", v::STEP_FIELDS),
        ("/$defs/daemon", v::DAEMON_FIELDS),
        ("/$defs/daemonReadiness", v::CHECK_FIELDS),
        ("/$defs/liveness", v::LIVENESS_FIELDS),
        ("/$defs/restart", v::RESTART_FIELDS),
        ("/$defs/restart/properties/backoff", v::BACKOFF_FIELDS),
        ("/$defs/daemon/properties/stop", v::STOP_FIELDS),
        ("/$defs/init/properties/health", v::HEALTH_FIELDS),
        ("/$defs/init/properties/control", v::CONTROL_FIELDS),
        ("/$defs/init/properties/shutdown", v::SHUTDOWN_FIELDS),
        ("/$defs/init/properties/notify", v::NOTIFY_FIELDS),
        ("/$defs/init/properties/logs", v::LOGS_FIELDS),
    ];
    for (pointer, fields) in sections {
        assert_eq!(props(&schema, pointer), set(fields), "section {pointer:?}");
    }
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
}
