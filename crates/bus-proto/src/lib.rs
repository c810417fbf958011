//! `tether.bus.v1`: the plugin bus protocol, generated from `proto/tether/bus/v1/bus.proto`.
//!
//! Shared by the Bus API server, the bus sidecar and the Rust plugin SDK. The Python SDK generates
//! from the same `.proto` ([`PROTO`] carries its text).

#![allow(
    clippy::doc_lazy_continuation,
    clippy::large_enum_variant,
    reason = "generated code"
)]

/// The generated messages, clients (`bus_api_client`, `plugin_service_client`) and servers.
pub mod v1 {
    tonic::include_proto!("tether.bus.v1");
}

/// The codec of every call of both services: prost's, with buffers of [`CODEC_BUFFER`] bytes
/// per call and direction instead of tonic's 8 KiB. A bus message is typically about 1 KiB,
/// and a sidecar has hundreds of publishes in flight at once, each a call with two buffers; a
/// larger message grows its buffer as before.
#[derive(Debug)]
pub struct Codec<T, U>(std::marker::PhantomData<fn() -> (T, U)>);

/// The initial size of a call's encode and decode buffers.
pub const CODEC_BUFFER: usize = 2 * 1024;

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Self(std::marker::PhantomData)
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = tonic_prost::ProstEncoder<T>;
    type Decoder = tonic_prost::ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::new(buffers())
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::new(buffers())
    }
}

fn buffers() -> tonic::codec::BufferSettings {
    // The yield threshold stays tonic's default.
    tonic::codec::BufferSettings::new(CODEC_BUFFER, 32 * 1024)
}

/// The protocol's major version, the `v1` of the package name.
pub const PROTOCOL_MAJOR: u32 = 1;

/// The metadata key that carries the major version on every call.
pub const PROTOCOL_HEADER: &str = "tether-bus-protocol";

/// The metadata key that carries the session Register answered with.
pub const SESSION_HEADER: &str = "tether-bus-session";

/// The `.proto` this crate was generated from.
pub const PROTO: &str = include_str!("../proto/tether/bus/v1/bus.proto");

/// Whether a peer's major version can talk to this one; `Err` is the message to send back with
/// `FAILED_PRECONDITION`.
pub fn check_major(peer: u32) -> Result<(), String> {
    if peer == PROTOCOL_MAJOR {
        Ok(())
    } else {
        Err(format!(
            "protocol major {peer} is not spoken here: this peer speaks tether.bus.v{PROTOCOL_MAJOR} (major {PROTOCOL_MAJOR}); upgrade or downgrade one side so both speak the same major"
        ))
    }
}

/// Checks the `tether-bus-protocol` metadata of a call: missing or another major is a
/// `FAILED_PRECONDITION` with a message that says which major is spoken here.
#[allow(
    clippy::result_large_err,
    reason = "tonic's Status is what handlers return"
)]
pub fn check_metadata(metadata: &tonic::metadata::MetadataMap) -> Result<(), tonic::Status> {
    let Some(value) = metadata.get(PROTOCOL_HEADER) else {
        return Err(tonic::Status::failed_precondition(format!(
            "the call carries no `{PROTOCOL_HEADER}` metadata: send `{PROTOCOL_HEADER}: {PROTOCOL_MAJOR}` (tether.bus.v{PROTOCOL_MAJOR})"
        )));
    };
    let major = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
        .ok_or_else(|| {
            tonic::Status::failed_precondition(format!(
                "`{PROTOCOL_HEADER}` metadata is not a major version number: send `{PROTOCOL_HEADER}: {PROTOCOL_MAJOR}`"
            ))
        })?;
    check_major(major).map_err(tonic::Status::failed_precondition)
}

/// Adds the `tether-bus-protocol` metadata of this major to a request.
pub fn with_major<T>(mut request: tonic::Request<T>) -> tonic::Request<T> {
    request.metadata_mut().insert(
        PROTOCOL_HEADER,
        tonic::metadata::MetadataValue::from(PROTOCOL_MAJOR),
    );
    request
}

impl v1::Action {
    /// The word the policy file and messages use: `publish`, `subscribe`.
    pub fn word(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::Publish => "publish",
            Self::Subscribe => "subscribe",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_package_is_the_major_version() {
        assert!(PROTO.contains(&format!("package tether.bus.v{PROTOCOL_MAJOR};")));
    }

    #[test]
    fn another_major_is_named_in_the_refusal() {
        assert_eq!(check_major(1), Ok(()));
        let err = check_major(2).unwrap_err();
        assert!(
            err.starts_with(
                "protocol major 2 is not spoken here: this peer speaks tether.bus.v1 (major 1)"
            ),
            "{err}"
        );
    }

    #[test]
    fn metadata_without_or_with_another_major_is_a_failed_precondition() {
        let mut md = tonic::metadata::MetadataMap::new();
        let e = check_metadata(&md).unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        md.insert(PROTOCOL_HEADER, "2".parse().unwrap());
        let e = check_metadata(&md).unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert!(e.message().contains("protocol major 2"));
        md.insert(PROTOCOL_HEADER, "1".parse().unwrap());
        assert!(check_metadata(&md).is_ok());
    }
}
