//! Session ids: what tells one run's session sidecars from another's.

/// `s` and eight hex digits from the clock and the process id: unique enough to tell sessions
/// apart, and a valid DNS label.
pub fn new_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    format!("s{:08x}", h.finish() as u32)
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_dns_labels_and_differ() {
        let (a, b) = (super::new_id(), super::new_id());
        assert_ne!(a, b);
        for id in [a, b] {
            assert_eq!(id.len(), 9);
            assert!(tether_spec::values::check_dns_label(&id).is_ok(), "{id}");
        }
    }
}
