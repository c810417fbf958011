//! The policy example the README shows (examples/bus-policy.yaml) loads, and decides as its
//! comments say.

use std::path::Path;

use tether_bus::policy::{self, Action, Grant};

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
}
