//! [`IdempotencyLayer`]: `dedup_table` claim mode around any tower service over `http` types.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt as _;
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, BodyStream, StreamBody};

use sha2::{Digest as _, Sha256};

use super::{DEFAULT_MAX_KEY_LEN, IDEMPOTENT_REPLAYED, KeyError, Problem, idempotency_key};
use crate::strategy::dedup_table::{self, Options};
use crate::{ClaimStore, Disposition, Error, Fingerprinter, KeyBuilder, OnBusy, OnCancel, observe};

/// A boxed error, as tower and hyper use.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type the layer hands to the inner service and returns: any body of [`Bytes`],
/// boxed (`Send`, not `Sync`, as axum's own body). axum's `Router`, `Route` and handlers
/// accept requests with any such body.
pub struct Body(UnsyncBoxBody<Bytes, BoxError>);

impl Body {
    /// Boxes `body`.
    pub fn new<B>(body: B) -> Self
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        Body(body.map_err(Into::into).boxed_unsync())
    }
}

impl From<Bytes> for Body {
    fn from(bytes: Bytes) -> Self {
        Body(
            http_body_util::Full::new(bytes)
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Body").finish_non_exhaustive()
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.0).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.0.size_hint()
    }
}

/// What to do with a request whose body is larger than
/// [`max_request_bytes`](IdempotencyLayer::max_request_bytes): the fingerprint covers the
/// whole body, so the layer cannot judge it without buffering it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum LargeRequest {
    /// Answer `413 Content Too Large` (problem+json); the inner service is not called.
    #[default]
    Reject,
    /// Pass it to the inner service without idempotency (no claim, no record; a tracing
    /// warning): a retry runs it again.
    PassThrough,
}

type ScopeFn = dyn Fn(&Parts) -> Option<String> + Send + Sync;
type StoreFn = dyn Fn(&http::response::Parts) -> bool + Send + Sync;

/// Headers never stored (RFC 9110 §7.6.1 hop-by-hop fields, plus `Content-Length`, which the
/// server writes again for the replayed body).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::CONTENT_LENGTH,
];

#[derive(Clone)]
struct Config {
    name: String,
    methods: Vec<Method>,
    required: bool,
    max_key_len: usize,
    scope: Option<Arc<ScopeFn>>,
    fingerprint_headers: Vec<HeaderName>,
    deny_headers: Vec<HeaderName>,
    store_set_cookie: bool,
    max_request_bytes: usize,
    large_request: LargeRequest,
    max_response_bytes: usize,
    /// Whether a handler response (by its status and headers) is stored and replayed.
    store: Arc<StoreFn>,
    options: Options,
    retry_after: Duration,
    detach: bool,
}

/// A tower [`Layer`](tower::Layer) that makes requests carrying an `Idempotency-Key` header
/// idempotent: the first request with a key runs the inner service and its response is
/// stored; a retry with the same key and payload gets the stored response back with
/// `Idempotent-Replayed: true`; a concurrent one gets `409`; the same key with another payload
/// `422` (see [the module](super) for every answer and the draft section behind it).
///
/// Underneath it is `dedup_table` claim mode ([`dedup_table::run`]) on `store`, any
/// [`ClaimStore`] (a sqlx pool of PostgreSQL, MySQL/MariaDB or SQLite, a
/// [`RedisStore`](crate::RedisStore), a [`MemoryStore`](crate::MemoryStore)), with the
/// attribute's rules: the claim commits first with a lease, renewed while the handler runs; a
/// handler slower than `on_busy` allows makes retries wait or get `409`; the stored response is
/// replayed for `ttl`; the storage key is (operation [`name`](Self::name), [`scope`](Self::scope),
/// key) hashed; the fingerprint covers the method, the path with its query, the body and the
/// [`fingerprint_headers`](Self::fingerprint_headers).
///
/// ```ignore
/// let app = Router::new()
///     .route("/orders", post(create_order))
///     .layer(IdempotencyLayer::new(pool.clone()).required(true).scope(|req| {
///         req.headers.get("x-tenant").and_then(|v| v.to_str().ok()).map(str::to_owned)
///     }));
/// ```
///
/// By default the request runs in a task of its own ([`detach`](Self::detach)): a client that
/// drops its connection does not cancel the handler halfway, and the response is recorded for
/// its retry.
#[derive(Clone)]
pub struct IdempotencyLayer<K> {
    store: K,
    config: Arc<Config>,
}

impl<K: ClaimStore> IdempotencyLayer<K> {
    /// A layer storing its claims and responses in `store`, with the defaults: methods `POST`
    /// and `PATCH`, key optional (requests without one pass through untouched), keys up to
    /// [`DEFAULT_MAX_KEY_LEN`] characters, no scope, bodies up to 1 MiB in and 4 MiB out,
    /// every status but 5xx stored ([`terminal`](Self::terminal)), `Set-Cookie` never stored, lease 30 s, TTL 24 h,
    /// concurrent duplicates refused with `409` and `Retry-After: 1`, operation name `"http"`.
    pub fn new(store: K) -> Self {
        IdempotencyLayer {
            store,
            config: Arc::new(Config {
                name: "http".to_owned(),
                methods: vec![Method::POST, Method::PATCH],
                required: false,
                max_key_len: DEFAULT_MAX_KEY_LEN,
                scope: None,
                fingerprint_headers: Vec::new(),
                deny_headers: Vec::new(),
                store_set_cookie: false,
                max_request_bytes: 1024 * 1024,
                large_request: LargeRequest::Reject,
                max_response_bytes: dedup_table::DEFAULT_MAX_RESPONSE_BYTES,
                store: Arc::new(|p: &http::response::Parts| !p.status.is_server_error()),
                options: Options::default(),
                retry_after: Duration::from_secs(1),
                detach: true,
            }),
        }
    }

    fn with(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(Arc::make_mut(&mut self.config));
        self
    }

    /// The operation name in the storage key (default `"http"`): two layers with different
    /// names never share records. Within one name the fingerprint covers method and path, so
    /// a key reused on another route is answered `422`.
    pub fn name(self, name: impl Into<String>) -> Self {
        let name = name.into();
        self.with(|c| c.name = name)
    }

    /// The methods the layer applies to (default `POST` and `PATCH`, the draft's §1); other
    /// requests pass through untouched.
    pub fn methods(self, methods: impl IntoIterator<Item = Method>) -> Self {
        let methods = methods.into_iter().collect();
        self.with(|c| c.methods = methods)
    }

    /// When `true`, a request of a covered method without the header is answered `400`
    /// problem+json (the draft, §2.7); when `false` (the default) it passes through without
    /// idempotency.
    pub fn required(self, required: bool) -> Self {
        self.with(|c| c.required = required)
    }

    /// The longest key accepted, in characters (default [`DEFAULT_MAX_KEY_LEN`], 255; the
    /// runtime's own bound, [`MAX_KEY_BYTES`](crate::MAX_KEY_BYTES), caps it). Longer keys get
    /// `400`.
    pub fn max_key_len(self, max: usize) -> Self {
        self.with(|c| c.max_key_len = max.min(crate::MAX_KEY_BYTES))
    }

    /// The scope of the key: who the request is from (an authenticated user or tenant, read
    /// from the request's extensions or a header), so two callers' keys never meet. `None`
    /// from the closure means no scope. Default: no scope, which suits only a service with a
    /// single caller: without one, any client that learns or guesses another's key gets that
    /// client's stored response (the draft, §5).
    pub fn scope(self, scope: impl Fn(&Parts) -> Option<String> + Send + Sync + 'static) -> Self {
        let scope: Arc<ScopeFn> = Arc::new(scope);
        self.with(|c| c.scope = Some(scope))
    }

    /// Request headers that belong to the payload and so to the fingerprint (say
    /// `Content-Type`, or a version header); by default none: method, path with query and
    /// body only.
    pub fn fingerprint_headers(self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        let names = names.into_iter().collect();
        self.with(|c| c.fingerprint_headers = names)
    }

    /// Response headers never stored, so a replay lacks them (hop-by-hop fields and
    /// `Content-Length` are never stored; `Set-Cookie` see [`store_set_cookie`](Self::store_set_cookie)).
    pub fn deny_headers(self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        let names = names.into_iter().collect();
        self.with(|c| c.deny_headers = names)
    }

    /// Whether `Set-Cookie` is stored and replayed (default `false`: a session cookie handed to
    /// whoever retries the key is a session leak).
    pub fn store_set_cookie(self, store: bool) -> Self {
        self.with(|c| c.store_set_cookie = store)
    }

    /// The largest request body buffered for the fingerprint, in bytes (default 1 MiB); a
    /// larger one is handled per [`on_large_request`](Self::on_large_request). Only this much
    /// is ever read before deciding.
    pub fn max_request_bytes(self, max: usize) -> Self {
        self.with(|c| c.max_request_bytes = max)
    }

    /// What a request body over [`max_request_bytes`](Self::max_request_bytes) gets (default
    /// [`LargeRequest::Reject`], `413`).
    pub fn on_large_request(self, what: LargeRequest) -> Self {
        self.with(|c| c.large_request = what)
    }

    /// The largest response body stored for replay, in bytes (default 4 MiB). A response body
    /// over it (by its `Content-Length`, or once that many bytes have streamed) is passed
    /// through to the client as it streams, not stored, and its claim released with a tracing
    /// warning: a retry runs the handler again.
    pub fn max_response_bytes(self, max: usize) -> Self {
        self.with(|c| {
            c.max_response_bytes = max;
            // The stored JSON (base64 at worst, headers) must fit the strategy's own limit.
            c.options.max_response_bytes = max.saturating_mul(2).saturating_add(64 * 1024);
        })
    }

    /// Which response statuses are stored and replayed, every status included (default: all
    /// but 5xx, the same as `terminal(|p| p.status.is_client_error())`). A response whose
    /// status is not stored reaches the client as it is and releases the claim, so the
    /// client's retry runs the handler again (the draft, §2.6 leaves this to the server).
    /// `store_status` and [`terminal`](Self::terminal) set the same rule: the last one called
    /// wins.
    ///
    /// ```ignore
    /// // Store successes only: any 4xx or 5xx releases the claim.
    /// let layer = IdempotencyLayer::new(pool).store_status(|status| status.is_success());
    /// ```
    pub fn store_status(self, store: impl Fn(StatusCode) -> bool + Send + Sync + 'static) -> Self {
        let store: Arc<StoreFn> = Arc::new(move |p: &http::response::Parts| store(p.status));
        self.with(|c| c.store = store)
    }

    /// The error policy of the layer, as `terminal = "path"` is the attribute's: which error
    /// responses (status 400 to 599) of the handler are terminal, stored and replayed to
    /// every retry with the key for [`ttl`](Self::ttl) without running the handler again,
    /// and which release the claim so that a retry runs it again. `terminal` sees the
    /// response's status and headers ([`http::response::Parts`]; the body is not read yet).
    /// Responses below 400 are always stored. Default: every 4xx terminal, every 5xx not
    /// (`|p| p.status.is_client_error()`).
    ///
    /// A response that is not terminal reaches the client as it is. A terminal one is stored
    /// like a success (the headers as [`deny_headers`](Self::deny_headers) and
    /// [`store_set_cookie`](Self::store_set_cookie) allow; a body over
    /// [`max_response_bytes`](Self::max_response_bytes) is passed through and released
    /// instead). `terminal` and [`store_status`](Self::store_status) set the same rule: the
    /// last one called wins.
    ///
    /// ```ignore
    /// use http::{StatusCode, header};
    ///
    /// // A declined payment (402) and a validation failure (422) are final; a conflict (409),
    /// // a rate limit (429) and any other 4xx or 5xx release the claim: the retry runs.
    /// let payments = IdempotencyLayer::new(pool.clone()).terminal(|p| {
    ///     matches!(p.status, StatusCode::PAYMENT_REQUIRED | StatusCode::UNPROCESSABLE_ENTITY)
    /// });
    ///
    /// // Every error final unless the handler asks for a retry with `Retry-After`.
    /// let others = IdempotencyLayer::new(pool)
    ///     .terminal(|p| !p.headers.contains_key(header::RETRY_AFTER));
    /// ```
    pub fn terminal(
        self,
        terminal: impl Fn(&http::response::Parts) -> bool + Send + Sync + 'static,
    ) -> Self {
        let store: Arc<StoreFn> =
            Arc::new(move |p: &http::response::Parts| p.status.as_u16() < 400 || terminal(p));
        self.with(|c| c.store = store)
    }

    /// How long an in-progress claim lives without renewal (default 30 s; see
    /// [`Options::lease`]).
    pub fn lease(self, lease: Duration) -> Self {
        self.with(|c| c.options.lease = lease)
    }

    /// How long a stored response is replayed (default 24 h; see [`Options::ttl`]): publish
    /// it, as the draft's §2.3 asks.
    pub fn ttl(self, ttl: Duration) -> Self {
        self.with(|c| c.options.ttl = ttl)
    }

    /// What a request gets while another with its key is in progress (default
    /// [`OnBusy::Reject`]: `409` with `Retry-After`); [`OnBusy::Wait`] waits up to its limit
    /// for the first to complete, then replays it (or answers `409` after the wait).
    pub fn on_busy(self, on_busy: OnBusy) -> Self {
        self.with(|c| c.options.on_busy = on_busy)
    }

    /// What happens to the claim when the request's future is dropped mid-handler (only with
    /// [`detach`](Self::detach) `false`; default [`OnCancel::Keep`]: the claim stays until its
    /// lease ends).
    pub fn on_cancel(self, on_cancel: OnCancel) -> Self {
        self.with(|c| c.options.on_cancel = on_cancel)
    }

    /// The `Retry-After` sent with `409` (default 1 s, sent in whole seconds, at least 1).
    pub fn retry_after(self, after: Duration) -> Self {
        self.with(|c| c.retry_after = after)
    }

    /// Whether a request with a key runs in a task of its own (default `true`): then a client
    /// that drops its connection does not cancel the handler, whose response is recorded for
    /// the retry. With `false` the handler runs in the connection's future, and a disconnect
    /// drops it wherever it is (the claim then follows [`on_cancel`](Self::on_cancel)).
    /// Needs a tokio runtime.
    pub fn detach(self, detach: bool) -> Self {
        self.with(|c| c.detach = detach)
    }
}

impl<K: Clone, S> tower::Layer<S> for IdempotencyLayer<K> {
    type Service = IdempotencyService<K, S>;

    fn layer(&self, inner: S) -> Self::Service {
        IdempotencyService {
            inner,
            store: self.store.clone(),
            config: self.config.clone(),
        }
    }
}

/// The service [`IdempotencyLayer`] wraps around `S`. It takes requests with any body and
/// hands `S` requests with a [`Body`]; its responses have a [`Body`] too.
#[derive(Clone)]
pub struct IdempotencyService<K, S> {
    inner: S,
    store: K,
    config: Arc<Config>,
}

impl<K, S> std::fmt::Debug for IdempotencyService<K, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdempotencyService")
            .field("name", &self.config.name)
            .finish_non_exhaustive()
    }
}

impl<K> std::fmt::Debug for IdempotencyLayer<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdempotencyLayer")
            .field("name", &self.config.name)
            .finish_non_exhaustive()
    }
}

impl<K, S, ReqB, ResB> tower::Service<Request<ReqB>> for IdempotencyService<K, S>
where
    K: ClaimStore,
    S: tower::Service<Request<Body>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqB: http_body::Body<Data = Bytes> + Send + 'static,
    ReqB::Error: Into<BoxError>,
    ResB: http_body::Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        // The service that was polled ready serves this request; a clone takes its place.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(handle(self.store.clone(), self.config.clone(), inner, req))
    }
}

fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    Body::new(body)
}

fn full(bytes: Bytes) -> Body {
    Body::from(bytes)
}

fn problem(p: &Problem) -> Response<Body> {
    p.to_response().map(full)
}

/// Calls `inner` with `req` as it is (its body boxed), boxing the response's body.
async fn pass<S, ResB>(mut inner: S, req: Request<Body>) -> Result<Response<Body>, S::Error>
where
    S: tower::Service<Request<Body>, Response = Response<ResB>>,
    ResB: http_body::Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    Ok(inner.call(req).await?.map(boxed))
}

async fn handle<K, S, ReqB, ResB>(
    store: K,
    config: Arc<Config>,
    inner: S,
    req: Request<ReqB>,
) -> Result<Response<Body>, S::Error>
where
    K: ClaimStore,
    S: tower::Service<Request<Body>, Response = Response<ResB>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqB: http_body::Body<Data = Bytes> + Send + 'static,
    ReqB::Error: Into<BoxError>,
    ResB: http_body::Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    if !config.methods.contains(req.method()) {
        return pass(inner, req.map(boxed)).await;
    }
    let key = match idempotency_key(req.headers(), config.max_key_len) {
        Ok(Some(key)) => key,
        Ok(None) if config.required => {
            return Ok(problem(&Problem::from_key_error(&KeyError::Missing)));
        }
        Ok(None) => return pass(inner, req.map(boxed)).await,
        Err(e) => return Ok(problem(&Problem::from_key_error(&e))),
    };
    let (parts, body) = req.into_parts();
    let scope = config.scope.as_ref().and_then(|scope| scope(&parts));
    let body = match buffer(boxed(body), config.max_request_bytes).await {
        Ok(Buffered::Whole(bytes)) => bytes,
        Ok(Buffered::Not(body)) => {
            return match config.large_request {
                LargeRequest::Reject => Ok(problem(&Problem::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    None,
                    "Content Too Large",
                    format!(
                        "the request body is over {} bytes, the most this idempotent operation reads to fingerprint it",
                        config.max_request_bytes
                    ),
                ))),
                LargeRequest::PassThrough => {
                    tracing::warn!(
                        limit = config.max_request_bytes,
                        "a request body over the limit passes through without idempotency"
                    );
                    pass(inner, Request::from_parts(parts, body)).await
                }
            };
        }
        Err(e) => {
            return Ok(problem(&Problem::new(
                StatusCode::BAD_REQUEST,
                None,
                "Bad Request",
                format!("the request body could not be read: {e}"),
            )));
        }
    };
    let prepared = fingerprint(&parts, &config.fingerprint_headers, &body).and_then(|fp| {
        let mut k = KeyBuilder::new(&config.name);
        if let Some(scope) = &scope {
            k = k.scope(scope.as_str());
        }
        Ok((k.part(key.as_str()).finish()?, fp))
    });
    let (storage_key, fp) = match prepared {
        Ok(p) => p,
        Err(e) => return Ok(problem(&Problem::from_error(&e))),
    };
    let detach = config.detach;
    let call = async move {
        let request = Request::from_parts(parts, full(body));
        let run = dedup_table::run(
            &store,
            storage_key,
            Some(fp),
            config.options,
            same,
            async || exchange(inner, request, config.clone()).await,
        );
        let (result, how) = observe(run).await;
        respond(result, how, &config)
    };
    if !detach {
        return call.await;
    }
    match tokio::spawn(call).await {
        Ok(result) => result,
        Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
        Err(join) => Ok(problem(&Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            None,
            "Service Unavailable",
            format!("the request's task was cancelled (the server is shutting down?): {join}"),
        ))),
    }
}

/// The fingerprint of a request: method, path and query, the listed headers (every value, in
/// order) and the body's SHA-256, in the runtime's canonical form.
fn fingerprint(
    parts: &Parts,
    headers: &[HeaderName],
    body: &Bytes,
) -> Result<crate::Fingerprint, Error> {
    let target = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path(), |pq| pq.as_str());
    let listed: Vec<(&str, Vec<&[u8]>)> = headers
        .iter()
        .map(|name| {
            let values = parts
                .headers
                .get_all(name)
                .iter()
                .map(HeaderValue::as_bytes);
            (name.as_str(), values.collect())
        })
        .collect();
    let digest = crate::key::lower_hex(&Sha256::digest(body));
    Fingerprinter::new()
        .arg("method", parts.method.as_str())
        .arg("target", target)
        .arg("headers", &listed)
        .arg("body_sha256", &digest)
        .finish()?
        .ok_or_else(|| Error::Serialization("the request fingerprint is missing".to_owned()))
}

/// Why the handler's response is not stored (each releases the claim, so a retry runs the
/// handler again).
enum NotStored<E> {
    /// The strategy's own error (converted by `run`).
    Idempotency(Error),
    /// Given to the client as it is: a status that is not stored, or a body over the limit.
    Pass(Response<Body>),
    /// The response body failed while it was read.
    BodyFailed(BoxError),
    /// The inner service failed.
    Inner(E),
}

impl<E> From<Error> for NotStored<E> {
    fn from(e: Error) -> Self {
        NotStored::Idempotency(e)
    }
}

/// Runs the inner service and reads its response for storing.
async fn exchange<S, ResB>(
    mut inner: S,
    request: Request<Body>,
    config: Arc<Config>,
) -> Result<Stored, NotStored<S::Error>>
where
    S: tower::Service<Request<Body>, Response = Response<ResB>>,
    ResB: http_body::Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    let response = inner.call(request).await.map_err(NotStored::Inner)?;
    let (parts, body) = response.into_parts();
    if !(config.store)(&parts) {
        return Err(NotStored::Pass(Response::from_parts(parts, boxed(body))));
    }
    match buffer(boxed(body), config.max_response_bytes).await {
        Ok(Buffered::Whole(bytes)) => Ok(Stored::new(parts, bytes, &config)),
        Ok(Buffered::Not(body)) => {
            tracing::warn!(
                limit = config.max_response_bytes,
                status = parts.status.as_u16(),
                "a response body over the limit (or with trailers) is passed through, not stored; the claim is released and a retry runs the handler again"
            );
            Err(NotStored::Pass(Response::from_parts(parts, body)))
        }
        Err(e) => Err(NotStored::BodyFailed(e)),
    }
}

fn respond<E>(
    result: Result<Stored, NotStored<E>>,
    how: Option<Disposition>,
    config: &Config,
) -> Result<Response<Body>, E> {
    match result {
        Ok(stored) => {
            let mut response = stored.into_response();
            if how == Some(Disposition::Replayed) {
                response
                    .headers_mut()
                    .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
            }
            Ok(response)
        }
        Err(NotStored::Idempotency(e)) => {
            let mut p = Problem::from_error(&e);
            if p.retry_after.is_some() && p.status == StatusCode::CONFLICT.as_u16() {
                p.retry_after = Some(config.retry_after);
            }
            Ok(problem(&p))
        }
        Err(NotStored::Pass(response)) => Ok(response),
        Err(NotStored::BodyFailed(e)) => Ok(problem(&Problem::new(
            StatusCode::BAD_GATEWAY,
            None,
            "Bad Gateway",
            format!("the handler's response body failed: {e}; nothing was stored"),
        ))),
        Err(NotStored::Inner(e)) => Err(e),
    }
}

/// A body read up to a limit.
enum Buffered {
    /// All of it, within the limit, without trailers.
    Whole(Bytes),
    /// Over the limit (or with trailers): what was read, followed by the rest, unread.
    Not(Body),
}

/// Reads `body` while it stays within `limit` bytes ([`Buffered::Whole`]); a body whose size
/// hint is over the limit is not read at all, and one that grows past it is given back whole
/// (the bytes read so far, then the rest as it streams).
async fn buffer(mut body: Body, limit: usize) -> Result<Buffered, BoxError> {
    use http_body::Body as _;
    if body.size_hint().lower() > limit as u64 {
        return Ok(Buffered::Not(body));
    }
    let mut read: Vec<Frame<Bytes>> = Vec::new();
    let mut len = 0usize;
    loop {
        let Some(frame) = body.frame().await else {
            let mut all = BytesMut::with_capacity(len);
            for f in read {
                if let Some(data) = f.data_ref() {
                    all.extend_from_slice(data);
                }
            }
            return Ok(Buffered::Whole(all.freeze()));
        };
        let frame = frame?;
        let over = match frame.data_ref() {
            Some(data) => {
                len += data.len();
                len > limit
            }
            // Trailers are not stored: the body goes through as it is.
            None => true,
        };
        read.push(frame);
        if over {
            let read = futures_util::stream::iter(read.into_iter().map(Ok));
            let rest = read.chain(BodyStream::new(body.0));
            return Ok(Buffered::Not(Body::new(StreamBody::new(rest))));
        }
    }
}

/// A stored header value or body: UTF-8 text as it is, anything else in base64.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
enum Content {
    Text(String),
    Base64(String),
}

impl Content {
    fn new(bytes: &[u8]) -> Self {
        match std::str::from_utf8(bytes) {
            Ok(text) => Content::Text(text.to_owned()),
            Err(_) => Content::Base64(base64::engine::general_purpose::STANDARD.encode(bytes)),
        }
    }

    fn bytes(&self) -> Result<Bytes, Error> {
        match self {
            Content::Text(t) => Ok(Bytes::copy_from_slice(t.as_bytes())),
            Content::Base64(b) => base64::engine::general_purpose::STANDARD
                .decode(b)
                .map(Bytes::from)
                .map_err(|e| Error::Serialization(format!("a stored response is malformed: {e}"))),
        }
    }
}

/// The response as stored for replay: status, the storable headers, body. The first caller's
/// response also keeps the headers that are not stored (`live`).
#[derive(serde::Serialize, serde::Deserialize)]
struct Stored {
    status: u16,
    headers: Vec<(String, Content)>,
    body: Content,
    #[serde(skip)]
    live: Option<(http::response::Parts, Bytes)>,
}

/// [`Stored`]'s comparison for the replay round-trip check: what is stored, not `live`.
fn same(a: &Stored, b: &Stored) -> Option<bool> {
    Some(a.status == b.status && a.headers == b.headers && a.body == b.body)
}

impl Stored {
    fn new(parts: http::response::Parts, body: Bytes, config: &Config) -> Self {
        let connection_named: Vec<String> = parts
            .headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|n| n.trim().to_ascii_lowercase())
            .collect();
        let headers = parts
            .headers
            .iter()
            .filter(|(name, _)| {
                !HOP_BY_HOP.contains(name)
                    && !config.deny_headers.contains(name)
                    && (config.store_set_cookie || *name != header::SET_COOKIE)
                    && !connection_named.iter().any(|n| n == name.as_str())
            })
            .map(|(name, value)| (name.as_str().to_owned(), Content::new(value.as_bytes())))
            .collect();
        Stored {
            status: parts.status.as_u16(),
            headers,
            body: Content::new(&body),
            live: Some((parts, body)),
        }
    }

    fn into_response(self) -> Response<Body> {
        if let Some((parts, body)) = self.live {
            return Response::from_parts(parts, full(body));
        }
        match self.replayed() {
            Ok(r) => r,
            Err(e) => problem(&Problem::from_error(&e)),
        }
    }

    fn replayed(self) -> Result<Response<Body>, Error> {
        let malformed =
            |what: String| Error::Serialization(format!("a stored response is malformed: {what}"));
        let mut headers = HeaderMap::with_capacity(self.headers.len());
        for (name, value) in &self.headers {
            let name =
                HeaderName::from_bytes(name.as_bytes()).map_err(|e| malformed(e.to_string()))?;
            let value = HeaderValue::from_maybe_shared(value.bytes()?)
                .map_err(|e| malformed(e.to_string()))?;
            headers.append(name, value);
        }
        let mut response = Response::new(full(self.body.bytes()?));
        *response.status_mut() =
            StatusCode::from_u16(self.status).map_err(|e| malformed(e.to_string()))?;
        *response.headers_mut() = headers;
        Ok(response)
    }
}
