//! A small HTTP/1 server for health and metrics endpoints: a listener and a route function.
//!
//! Used by `tether bus serve --http` (`/healthz`, `/readyz`, `/metrics`) and by the bus sidecar
//! for its own `/healthz` and `/readyz`. It answers GET and HEAD from a synchronous route
//! function, so the routes read shared state (atomics, a watch) and never wait:
//!
//! ```no_run
//! # async fn example() -> std::io::Result<()> {
//! use tether_bus::http::{Method, Reply, serve};
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:9090").await?;
//! let routes = |method: &Method, path: &str, _query: Option<&str>| match (method, path) {
//!     (&Method::GET, "/healthz") => Reply::text(200, "ok\n"),
//!     _ => Reply::not_found(path),
//! };
//! serve(listener, routes, std::future::pending()).await;
//! # Ok(())
//! # }
//! ```
//!
//! [`serve`] returns once `shutdown` completes: it stops accepting and drops the connections
//! still open (a health probe or a scrape is retried by its caller).

use std::future::Future;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

pub use hyper::Method;

/// The content type of the Prometheus text format.
pub const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One metric for [`prometheus`]: its name, type (`counter` or `gauge`), help text and value.
pub type Metric<'a> = (&'a str, &'a str, &'a str, u64);

/// Metrics in the Prometheus text format, in their order.
pub fn prometheus(metrics: &[Metric<'_>]) -> String {
    let mut out = String::new();
    for (name, kind, help, value) in metrics {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        ));
    }
    out
}

/// What a route answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Reply {
    /// Plain text.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }

    /// A JSON document, already serialised.
    pub fn json(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "application/json",
            body: body.into(),
        }
    }

    /// 404, naming the path.
    pub fn not_found(path: &str) -> Self {
        Self::text(404, format!("no such path: {path}\n"))
    }

    /// 405, for a method other than GET or HEAD.
    pub fn method_not_allowed(method: &Method) -> Self {
        Self::text(405, format!("{method} is not allowed: use GET\n"))
    }
}

/// Serves `routes` on `listener` until `shutdown` completes.
///
/// Every request is answered by `routes(method, path, query)` (the path without its query, and
/// the query if any); a HEAD is answered as a GET without its body. Methods other than GET and HEAD get 405.
pub async fn serve<R>(listener: TcpListener, routes: R, shutdown: impl Future<Output = ()>)
where
    R: Fn(&Method, &str, Option<&str>) -> Reply + Clone + Send + Sync + 'static,
{
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!("the HTTP listener could not accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let routes = routes.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let reply = answer(&routes, &req);
                async move { Ok::<_, std::convert::Infallible>(reply) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
    // Dropping the set aborts the connections still open.
}

fn answer<R, B>(routes: &R, req: &Request<B>) -> Response<Full<Bytes>>
where
    R: Fn(&Method, &str, Option<&str>) -> Reply,
{
    let method = req.method();
    let reply = if method == Method::GET || method == Method::HEAD {
        routes(&Method::GET, req.uri().path(), req.uri().query())
    } else {
        Reply::method_not_allowed(method)
    };
    let body = if method == Method::HEAD {
        Bytes::new()
    } else {
        Bytes::from(reply.body)
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() =
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = hyper::header::HeaderValue::from_str(reply.content_type) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, v);
    }
    response
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// One HTTP/1.0 request over a fresh connection: the status line and the body.
    pub(crate) async fn request(addr: std::net::SocketAddr, method: &str, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(format!("{method} {path} HTTP/1.0\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        let status = answer.lines().next().unwrap_or_default().to_owned();
        let body = answer
            .split_once("\r\n\r\n")
            .map(|(_, b)| b)
            .unwrap_or_default();
        format!("{status}\n{body}")
    }

    #[tokio::test]
    async fn routes_answer_get_and_head_and_refuse_the_rest() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let routes = |_: &Method, path: &str, _: Option<&str>| match path {
            "/healthz" => Reply::text(200, "ok\n"),
            "/readyz" => Reply::json(503, "{\"ready\":false}"),
            _ => Reply::not_found(path),
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, routes, async {
            let _ = stopped.await;
        }));
        assert_eq!(
            request(addr, "GET", "/healthz").await,
            "HTTP/1.0 200 OK\nok\n"
        );
        assert_eq!(
            request(addr, "GET", "/healthz?verbose=1").await,
            "HTTP/1.0 200 OK\nok\n"
        );
        assert_eq!(request(addr, "HEAD", "/healthz").await, "HTTP/1.0 200 OK\n");
        assert_eq!(
            request(addr, "GET", "/readyz").await,
            "HTTP/1.0 503 Service Unavailable\n{\"ready\":false}"
        );
        assert_eq!(
            request(addr, "GET", "/nope").await,
            "HTTP/1.0 404 Not Found\nno such path: /nope\n"
        );
        assert_eq!(
            request(addr, "POST", "/healthz").await,
            "HTTP/1.0 405 Method Not Allowed\nPOST is not allowed: use GET\n"
        );
        stop.send(()).unwrap();
        server.await.unwrap();
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }
}
