//! A Bus API client for people and scripts, behind `tether bus publish` and `tether bus tail`:
//! it registers as an instance asking for the grants its call needs (the bus's policy decides,
//! as for any instance), then makes plain calls with the session, and deregisters at the end.

use std::path::PathBuf;
use std::time::Duration;

use tether_bus_proto::v1::bus_api_client::BusApiClient;
use tether_bus_proto::v1::{
    AckRequest, DeregisterRequest, Grant, RegisterRequest, ReleaseRequest, SubscribeRequest,
};
use tether_bus_proto::{PROTOCOL_MAJOR, SESSION_HEADER, with_major};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status, Streaming};

pub use tether_bus_proto::v1::{Action, Delivery, PublishRequest, Subscription};
pub use tonic::Code;

/// A failed call as one line: its message, its causes, its code.
pub use crate::sidecar::status_line;

/// Whom to reach and as whom (no `Debug`: it holds the token).
#[derive(Clone)]
pub struct Options {
    /// `HOST:PORT`, `http://HOST:PORT` or `https://HOST:PORT`.
    pub url: String,
    /// The instance to register as, and its pool type: the policy's grants are theirs.
    pub instance: String,
    pub pool: String,
    /// The token of the pool or the instance, when the policy asks for one.
    pub token: Option<String>,
    /// A CA file (PEM) to check the bus's certificate with; TLS then, whatever the scheme.
    pub ca_file: Option<PathBuf>,
    /// The name the bus's certificate must carry, when not the address's host.
    pub tls_server_name: Option<String>,
    /// How long connecting, registering and each call may take.
    pub timeout: Duration,
}

/// Why the client could not do what it was asked: a line for the user, and a hint.
#[derive(Debug)]
pub struct ClientError {
    pub message: String,
    pub hint: Option<&'static str>,
    /// The options themselves are wrong (the address, TLS): nothing was dialed.
    pub usage: bool,
}

impl ClientError {
    fn new(message: String) -> Self {
        Self {
            message,
            hint: None,
            usage: false,
        }
    }

    fn usage(message: String, hint: Option<&'static str>) -> Self {
        Self {
            message,
            hint,
            usage: true,
        }
    }
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// A registered instance.
pub struct Client {
    api: BusApiClient<Channel>,
    session: MetadataValue<Ascii>,
    url: String,
    timeout: Duration,
}

/// What `url` and `ca_file` make: the URL to dial.
fn target(o: &Options) -> Result<String, ClientError> {
    let url = o.url.trim();
    let (scheme, authority) = crate::sidecar::config::parse_target(url).map_err(|e| {
        ClientError::usage(
            format!("--bus {e}"),
            Some("HOST:PORT, http://HOST:PORT or https://HOST:PORT: 127.0.0.1:8443"),
        )
    })?;
    let scheme = match (scheme, &o.ca_file) {
        ("http", Some(_)) if url.starts_with("http://") => {
            return Err(ClientError::usage(
                format!("--ca-file is for TLS and --bus {url} says plain http"),
                Some("https://HOST:PORT, or HOST:PORT alone, with --ca-file"),
            ));
        }
        (_, Some(_)) => "https",
        ("https", None) => {
            return Err(ClientError::usage(
                format!("--bus {url} is TLS and no CA file was given"),
                Some("--ca-file FILE: the CA certificate (PEM) that signed the bus's"),
            ));
        }
        (scheme, None) => scheme,
    };
    if scheme == "http" && o.tls_server_name.is_some() {
        return Err(ClientError::usage(
            "--tls-server-name is for TLS (--ca-file, or an https:// --bus)".into(),
            None,
        ));
    }
    Ok(format!("{scheme}://{authority}"))
}

impl Client {
    /// Connects to the bus and registers, asking for `grants`; every one must be given.
    pub async fn connect(o: &Options, grants: Vec<Grant>) -> Result<Self, ClientError> {
        let url = target(o)?;
        // Pinged as a sidecar pings: a bus gone without closing the connection ends a tail
        // instead of leaving it waiting.
        let mut endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| ClientError::usage(format!("--bus `{url}`: {e}"), None))?
            .connect_timeout(o.timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(crate::sidecar::PING_EVERY)
            .keep_alive_timeout(crate::sidecar::PING_TIMEOUT)
            .keep_alive_while_idle(true);
        if let Some(ca) = &o.ca_file {
            let tls = crate::tls::client_tls(ca, o.tls_server_name.as_deref())
                .map_err(|e| ClientError::usage(e.to_string(), None))?;
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| ClientError::usage(format!("TLS to {url}: {e}"), None))?;
        }
        let channel = match tokio::time::timeout(o.timeout, endpoint.connect()).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                return Err(ClientError::new(format!(
                    "cannot reach the Bus API at {url}: {}",
                    crate::error_chain(&e)
                )));
            }
            Err(_) => {
                return Err(ClientError::new(format!(
                    "the Bus API at {url} did not answer within {}s",
                    o.timeout.as_secs()
                )));
            }
        };
        let mut api = BusApiClient::new(channel);
        let mut request = with_major(Request::new(RegisterRequest {
            protocol_major: PROTOCOL_MAJOR,
            instance_id: o.instance.clone(),
            pool_type: o.pool.clone(),
            image: String::new(),
            tags: Vec::new(),
            requested_grants: grants,
            token: o.token.clone(),
        }));
        request.set_timeout(o.timeout);
        let answer = api
            .register(request)
            .await
            .map_err(|s| {
                ClientError::new(format!(
                    "the Bus API at {url} refused to register instance `{}` of pool `{}`: {}",
                    o.instance,
                    o.pool,
                    crate::sidecar::status_line(&s)
                ))
            })?
            .into_inner();
        if let Some(r) = answer.refused.first() {
            // Registered all the same: not left behind (a registration names its pool, and a
            // later Register as another pool would have to carry this one's token).
            if let Ok(session) = answer.session.parse::<MetadataValue<Ascii>>() {
                let mut request = with_major(Request::new(DeregisterRequest {}));
                request.metadata_mut().insert(SESSION_HEADER, session);
                request.set_timeout(o.timeout);
                let _ = api.deregister(request).await;
            }
            let grant = r.grant.clone().unwrap_or_default();
            return Err(ClientError {
                usage: false,
                message: format!(
                    "the bus did not give instance `{}` of pool `{}` the grant to {} on `{}`: {}",
                    o.instance,
                    o.pool,
                    action_word(grant.action()),
                    grant.topic,
                    r.reason
                ),
                hint: Some(
                    "register as an instance or pool the bus's policy gives it to (--instance, --pool, --token-file)",
                ),
            });
        }
        let session = answer
            .session
            .parse()
            .map_err(|_| ClientError::new("the bus answered a session that is not ASCII".into()))?;
        Ok(Self {
            api,
            session,
            url,
            timeout: o.timeout,
        })
    }

    /// The Bus API's address, as dialed.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn request<T>(&self, message: T, timeout: Option<Duration>) -> Request<T> {
        let mut r = with_major(Request::new(message));
        r.metadata_mut()
            .insert(SESSION_HEADER, self.session.clone());
        if let Some(t) = timeout {
            r.set_timeout(t);
        }
        r
    }

    /// Publishes one message; answers its sequence in its topic.
    pub async fn publish(&mut self, request: PublishRequest) -> Result<u64, Status> {
        let r = self.request(request, Some(self.timeout));
        Ok(self.api.publish(r).await?.into_inner().sequence)
    }

    /// Opens a subscription stream.
    pub async fn subscribe(&mut self, sub: Subscription) -> Result<Streaming<Delivery>, Status> {
        let r = self.request(
            SubscribeRequest {
                subscription: Some(sub),
            },
            None,
        );
        Ok(self.api.subscribe(r).await?.into_inner())
    }

    pub async fn ack(&mut self, ids: Vec<String>) -> Result<u32, Status> {
        let r = self.request(AckRequest { delivery_ids: ids }, Some(self.timeout));
        Ok(self.api.ack(r).await?.into_inner().acked)
    }

    /// Gives back every delivery this session holds, then deregisters; what fails is not
    /// worth an error at the end (the bus delivers again what it gave after its ack deadline).
    pub async fn close(mut self) {
        let r = self.request(ReleaseRequest::default(), Some(self.timeout));
        if let Err(s) = self.api.release(r).await {
            tracing::debug!("release at the end: {}", crate::sidecar::status_line(&s));
        }
        let r = self.request(DeregisterRequest {}, Some(self.timeout));
        if let Err(s) = self.api.deregister(r).await {
            tracing::debug!("deregister at the end: {}", crate::sidecar::status_line(&s));
        }
    }
}

fn action_word(a: Action) -> &'static str {
    match a {
        Action::Publish => "publish",
        Action::Subscribe => "subscribe",
        Action::Unspecified => "do anything",
    }
}

/// The grant to `action` on `topic`.
pub fn grant(action: Action, topic: &str) -> Grant {
    Grant {
        topic: topic.to_owned(),
        action: action.into(),
    }
}
