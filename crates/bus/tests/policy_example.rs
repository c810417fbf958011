//! The policy example the README shows (examples/bus-policy.yaml) loads, and decides as its
//! comments say; so do examples/plugin-bus's policy and its sidecar's config, with the tokens
//! its build-images writes beside them.

use std::path::Path;

use tether_bus::policy::{self, Action, Grant, TokenCheck};
use tether_bus::sidecar::config::{Secret, Settings, load_settings};

#[test]
fn the_example_policy_loads_and_grants_what_it_says() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/bus-policy.yaml");
    let policy = policy::load(&path).unwrap_or_else(|e| panic!("{}", e.lines().join("\n")));
    let grant = |topic: &str, action| Grant {
        topic: topic.into(),
        action,
    };
    let (granted, refused) = policy.decide(
        "my-plugin",
        "SignalPool",
        &[
            grant("signals.daily", Action::Publish),
            grant("orders.new", Action::Subscribe),
            grant("orders.new", Action::Publish),
        ],
    );
    assert_eq!(
        granted,
        [
            grant("signals.daily", Action::Publish),
            grant("orders.new", Action::Subscribe)
        ]
    );
    let reasons: Vec<&str> = refused.iter().map(|r| r.reason.as_str()).collect();
    assert_eq!(
        reasons,
        [
            "the policy gives pool type `SignalPool` and instance `my-plugin` no grant to publish on `orders.new`"
        ]
    );
    // oms-1 has its own grant beside its pool's.
    let (granted, _) = policy.decide(
        "oms-1",
        "OMSPool",
        &[grant("dlq.orders.new", Action::Subscribe)],
    );
    assert_eq!(granted, [grant("dlq.orders.new", Action::Subscribe)]);
    // Without a token_file, as its comment says and `tether bus serve` warns: the example
    // policy has no tokens at all, and oms-1's grant goes to any pool that registers as it.
    assert_eq!(
        policy
            .unguarded
            .iter()
            .map(|u| (u.instance.as_str(), u.line))
            .collect::<Vec<_>>(),
        [("oms-1", 19)]
    );
    assert_eq!(
        policy.decide(
            "oms-1",
            "NotInThePolicy",
            &[grant("dlq.orders.new", Action::Subscribe)]
        ),
        (vec![grant("dlq.orders.new", Action::Subscribe)], vec![])
    );
}

#[test]
fn the_plugin_bus_example_asks_each_pool_for_the_token_its_sidecar_has() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/plugin-bus");
    // As in the containers' /run/secrets: the policy, the sidecar's config and the tokens in one
    // folder.
    let dir = tempfile::tempdir().unwrap();
    for file in ["policy.yaml", "sidecar.yaml"] {
        std::fs::copy(example.join(file), dir.path().join(file)).unwrap();
    }
    std::fs::write(dir.path().join("signal-pool.token"), "signal-secret").unwrap();
    std::fs::write(dir.path().join("oms-pool.token"), "oms-secret").unwrap();
    let policy = policy::load(&dir.path().join("policy.yaml"))
        .unwrap_or_else(|e| panic!("{}", e.lines().join("\n")));

    // The sidecar presents the SignalPool token; nothing else registers in that pool.
    let mut settings = Settings::defaults("my-plugin");
    load_settings(&dir.path().join("sidecar.yaml"), &mut settings)
        .unwrap_or_else(|e| panic!("{}", e.lines().join("\n")));
    assert_eq!(settings.token, Some(Secret("signal-secret".into())));
    assert_eq!(
        policy.check_token("my-plugin", "SignalPool", Some("signal-secret")),
        TokenCheck::Ok
    );
    let of = |pool: &str| format!("pool `{pool}`");
    assert_eq!(
        policy.check_token("my-plugin", "SignalPool", None),
        TokenCheck::Missing {
            of: of("SignalPool")
        }
    );
    assert_eq!(
        policy.check_token("my-plugin", "OMSPool", Some("signal-secret")),
        TokenCheck::Wrong { of: of("OMSPool") }
    );
    assert_eq!(
        policy.check_token("checker", "OMSPool", Some("oms-secret")),
        TokenCheck::Ok
    );

    // The plugin's grants, exactly what the example's sidecar requests; the order side's.
    let grant = |topic: &str, action| Grant {
        topic: topic.into(),
        action,
    };
    let plugin = [
        grant("signals.>", Action::Publish),
        grant("orders.*", Action::Subscribe),
    ];
    let (granted, refused) = policy.decide("my-plugin", "SignalPool", &plugin);
    assert_eq!((granted.as_slice(), refused.len()), (plugin.as_slice(), 0));
    let oms = [
        grant("orders.>", Action::Publish),
        grant("signals.>", Action::Subscribe),
    ];
    let (granted, refused) = policy.decide("checker", "OMSPool", &oms);
    assert_eq!((granted.as_slice(), refused.len()), (oms.as_slice(), 0));
    // A pool the policy does not name needs no token, and gets nothing.
    assert_eq!(policy.check_token("x", "Intruder", None), TokenCheck::Ok);
    let (granted, _) = policy.decide("x", "Intruder", &oms);
    assert!(granted.is_empty());
}
