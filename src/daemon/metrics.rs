//! What `/metrics` says: OpenMetrics text, written by `prometheus-client`.
//!
//! Two kinds of values, kept apart on purpose:
//!
//! - **Observed as they happen** (held here, in [`Metrics`]): request
//!   latencies, attempt durations, store syncs, blob bytes, HTTP requests.
//!   Services get an `Arc<Metrics>` at start and call one method where the
//!   thing happens.
//! - **Read at scrape time** from what the daemon and its services keep
//!   anyway (connection counters, queue counts, pool state, blob usage):
//!   never a second copy that could drift. Each service writes its part in
//!   [`Service::collect`](super::services::Service::collect) through a
//!   [`Scrape`].
//!
//! Names follow Prometheus: `hearth_` first, base units (`_seconds`,
//! `_bytes`), `_total` on counters. Label values come from closed sets
//! (channels, request types, outcomes, states) or from names the user gave
//! (queues, pools), never from request data.

use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeGaugeValue, EncodeLabel, EncodeLabelSet, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use super::Shared;
use crate::protocol::{Channel, ChannelProtocol, ChannelVisitor, Request};

/// Request latency buckets, in seconds: 50 µs to a minute.
const REQUEST_BUCKETS: &[f64] =
    &[0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 60.0];
/// Attempt durations: 10 ms to an hour.
const ATTEMPT_BUCKETS: &[f64] = &[0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];
/// Store syncs (fsync, an SQLite commit): 50 µs to a second.
const SYNC_BUCKETS: &[f64] =
    &[0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];

/// The content type of OpenMetrics text.
pub(crate) const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of the Prometheus text format, for scrapers that ask for it.
pub(crate) const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    channel: &'static str,
    r#type: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ChannelLabels {
    channel: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AttemptLabels {
    queue: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StoreLabels {
    store: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ViaLabels {
    via: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HttpLabels {
    route: &'static str,
    code: u16,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// The stores whose syncs are timed.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Store {
    /// The queue's SQLite commits (WAL, `synchronous=FULL`).
    Queue,
    /// Blob content and directory fsyncs.
    Blob,
    /// Pool lease files, fsynced in batches.
    Pool,
}

impl Store {
    fn as_str(self) -> &'static str {
        match self {
            Store::Queue => "queue",
            Store::Blob => "blob",
            Store::Pool => "pool",
        }
    }
}

/// How a blob's bytes left the daemon.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Via {
    /// A `get` on the socket.
    Socket,
    /// A `GET` on the HTTP server.
    Http,
}

/// The HTTP server's routes, as metrics label them.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Route {
    /// A service's route (`/blob/`), labelled with its channel.
    Service(Channel),
    Metrics,
    Dashboard,
    /// Refused before routing (`Host`), or no such path.
    Other,
}

/// The values observed as they happen, and the registry that writes them
/// with the ones read at scrape time.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    requests: HistogramFamily<RequestLabels>,
    channel_open: Family<ChannelLabels, Gauge>,
    channel_opened: Family<ChannelLabels, Counter>,
    attempts: HistogramFamily<AttemptLabels>,
    syncs: HistogramFamily<StoreLabels>,
    blob_put_bytes: Counter,
    blob_puts: Counter,
    blob_get_bytes: Family<ViaLabels, Counter>,
    blob_gets: Family<ViaLabels, Counter>,
    http_requests: Family<HttpLabels, Counter>,
    /// The daemon, once it exists: read at scrape time.
    daemon: Arc<OnceLock<Weak<Shared>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("hearth");
        let requests: HistogramFamily<RequestLabels> =
            Family::new_with_constructor(|| Histogram::new(REQUEST_BUCKETS.iter().copied()));
        // Every request type of every channel from the start, so that a
        // rate over a type that has not been used yet is 0, not absent.
        for &channel in Channel::ALL {
            for kind in channel.visit(RequestTypes) {
                let _ = requests.get_or_create(&RequestLabels { channel: channel.as_str(), r#type: kind });
            }
        }
        registry.register_with_unit(
            "request_duration",
            "Time from a request's arrival to its answer's first frame, per channel and request type",
            Unit::Seconds,
            requests.clone(),
        );
        // Per channel, from the handshake: every channel (one added later
        // included) is counted without code of its own.
        let channel_open = Family::<ChannelLabels, Gauge>::default();
        let channel_opened = Family::<ChannelLabels, Counter>::default();
        for &channel in Channel::ALL {
            let _ = channel_open.get_or_create(&ChannelLabels { channel: channel.as_str() });
            let _ = channel_opened.get_or_create(&ChannelLabels { channel: channel.as_str() });
        }
        registry.register(
            "channel_connections",
            "Client connections open on the socket, per channel (after the handshake)",
            channel_open.clone(),
        );
        registry.register(
            "channel_connections_opened",
            "Client connections accepted by a channel's handshake since start, per channel",
            channel_opened.clone(),
        );
        let attempts: HistogramFamily<AttemptLabels> =
            Family::new_with_constructor(|| Histogram::new(ATTEMPT_BUCKETS.iter().copied()));
        registry.register_with_unit(
            "queue_attempt_duration",
            "How long job attempts ran, per queue and outcome (succeeded, failed, timed_out, ...)",
            Unit::Seconds,
            attempts.clone(),
        );
        let syncs: HistogramFamily<StoreLabels> =
            Family::new_with_constructor(|| Histogram::new(SYNC_BUCKETS.iter().copied()));
        for store in [Store::Queue, Store::Blob, Store::Pool] {
            let _ = syncs.get_or_create(&StoreLabels { store: store.as_str() });
        }
        registry.register_with_unit(
            "store_sync_duration",
            "Time the stores take to make writes durable: the queue's commits, blob and pool lease fsyncs",
            Unit::Seconds,
            syncs.clone(),
        );
        let blob_put_bytes = Counter::default();
        registry.register_with_unit("blob_put", "Bytes received by blob puts", Unit::Bytes, blob_put_bytes.clone());
        let blob_puts = Counter::default();
        registry.register("blob_puts", "Blob puts completed (new content or not)", blob_puts.clone());
        let blob_get_bytes = Family::<ViaLabels, Counter>::default();
        let blob_gets = Family::<ViaLabels, Counter>::default();
        for via in [Via::Socket, Via::Http] {
            let _ = blob_get_bytes.get_or_create(&via.labels());
            let _ = blob_gets.get_or_create(&via.labels());
        }
        registry.register_with_unit(
            "blob_get",
            "Bytes of blobs sent, by the socket's get or HTTP",
            Unit::Bytes,
            blob_get_bytes.clone(),
        );
        registry.register("blob_gets", "Blob reads started, by the socket's get or HTTP", blob_gets.clone());
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "Requests answered by the HTTP server, per route and status code",
            http_requests.clone(),
        );
        let daemon = Arc::new(OnceLock::new());
        registry.register_collector(Box::new(DaemonCollector { daemon: daemon.clone() }));
        Self {
            registry,
            requests,
            channel_open,
            channel_opened,
            attempts,
            syncs,
            blob_put_bytes,
            blob_puts,
            blob_get_bytes,
            blob_gets,
            http_requests,
            daemon,
        }
    }

    /// Lets the scrape-time part read the daemon (it holds it weakly).
    pub(crate) fn attach(&self, shared: &Arc<Shared>) {
        let _ = self.daemon.set(Arc::downgrade(shared));
    }

    /// A request of `channel` of type `kind` was answered (its first frame
    /// written) `took` after it arrived.
    pub(crate) fn request(&self, channel: Channel, kind: &'static str, took: Duration) {
        let labels = RequestLabels { channel: channel.as_str(), r#type: kind };
        self.requests.get_or_create(&labels).observe(took.as_secs_f64());
    }

    /// A client connection's handshake on `channel` was accepted.
    pub(crate) fn channel_opened(&self, channel: Channel) {
        let labels = ChannelLabels { channel: channel.as_str() };
        self.channel_opened.get_or_create(&labels).inc();
        self.channel_open.get_or_create(&labels).inc();
    }

    /// A connection counted by [`channel_opened`](Self::channel_opened) ended.
    pub(crate) fn channel_closed(&self, channel: Channel) {
        self.channel_open.get_or_create(&ChannelLabels { channel: channel.as_str() }).dec();
    }

    /// A job's attempt in `queue` ended with `outcome` after `took`.
    pub(crate) fn attempt(&self, queue: &str, outcome: crate::protocol::queue::Outcome, took: Duration) {
        let labels = AttemptLabels { queue: queue.to_owned(), outcome: outcome.as_str() };
        self.attempts.get_or_create(&labels).observe(took.as_secs_f64());
    }

    /// `store` made writes durable in `took`.
    pub(crate) fn sync(&self, store: Store, took: Duration) {
        self.syncs.get_or_create(&StoreLabels { store: store.as_str() }).observe(took.as_secs_f64());
    }

    /// A blob put received `bytes`.
    pub(crate) fn blob_put(&self, bytes: u64) {
        self.blob_puts.inc();
        self.blob_put_bytes.inc_by(bytes);
    }

    /// A blob read started.
    pub(crate) fn blob_get(&self, via: Via) {
        self.blob_gets.get_or_create(&via.labels()).inc();
    }

    /// `bytes` of a blob were sent.
    pub(crate) fn blob_sent(&self, via: Via, bytes: u64) {
        self.blob_get_bytes.get_or_create(&via.labels()).inc_by(bytes);
    }

    /// The HTTP server answered a request of `route` with `code`.
    pub(crate) fn http_request(&self, route: Route, code: u16) {
        let route = match route {
            Route::Service(channel) => channel.as_str(),
            Route::Metrics => "metrics",
            Route::Dashboard => "dashboard",
            Route::Other => "other",
        };
        self.http_requests.get_or_create(&HttpLabels { route, code }).inc();
    }

    /// Everything, as OpenMetrics text (with `openmetrics`) or as the
    /// Prometheus text format.
    pub(crate) fn encode(&self, openmetrics: bool) -> Result<String, std::fmt::Error> {
        let mut out = String::with_capacity(32 * 1024);
        if openmetrics {
            prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?;
        }
        Ok(out)
    }
}

impl Via {
    fn labels(self) -> ViaLabels {
        ViaLabels {
            via: match self {
                Via::Socket => "socket",
                Via::Http => "http",
            },
        }
    }
}

/// Every request type of a channel.
struct RequestTypes;

impl ChannelVisitor for RequestTypes {
    type Output = &'static [&'static str];
    fn visit<C: ChannelProtocol>(self) -> Self::Output {
        C::Request::TYPES
    }
}

/// The request type named in a frame that decoded as a request of `R`,
/// as one of `R::TYPES` (so a label value never comes from the peer).
pub(crate) fn request_type<R: Request>(frame: &[u8]) -> Option<&'static str> {
    #[derive(serde::Deserialize)]
    struct Tagged<'a> {
        #[serde(borrow, rename = "type")]
        kind: std::borrow::Cow<'a, str>,
    }
    let tagged: Tagged<'_> = serde_json::from_slice(frame).ok()?;
    R::TYPES.iter().copied().find(|t| *t == tagged.kind)
}

/// The scrape-time part: the daemon's own counters, then each service's.
#[derive(Debug)]
struct DaemonCollector {
    daemon: Arc<OnceLock<Weak<Shared>>>,
}

impl Collector for DaemonCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Some(shared) = self.daemon.get().and_then(Weak::upgrade) else { return Ok(()) };
        let mut scrape = Scrape { encoder: &mut encoder };
        collect_daemon(&shared, &mut scrape)?;
        shared.services.collect(&mut scrape)
    }
}

/// The daemon's own metrics: who it is, health, connections, events, HTTP.
fn collect_daemon(shared: &Shared, scrape: &mut Scrape<'_, '_>) -> std::fmt::Result {
    use std::sync::atomic::Ordering::Relaxed;
    scrape.info("build", "The daemon's version", &Label("version", super::VERSION))?;
    let started = shared.started_at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    scrape.gauge(
        "start_time",
        "When the daemon started, in seconds since the Unix epoch",
        SECONDS,
        started.as_secs_f64(),
    )?;
    let health = shared.health();
    let states = ["healthy", "degraded", "unhealthy"];
    let samples = states.iter().map(|s| (Label("state", s), u64::from(health.state.as_str() == *s))).collect();
    scrape.gauges("health", "1 for the daemon's health state, 0 for the others", None, samples)?;
    let codes: Vec<String> = health.reasons.iter().map(|r| r.code.to_string()).collect();
    let samples = codes.iter().map(|c| (Label("code", c), 1u64)).collect();
    scrape.gauges("health_reason", "1 for each reason the daemon is not healthy, by its code", None, samples)?;
    let stats = &shared.stats;
    scrape.gauge("connections", "Client connections open on the socket", None, shared.active_connections())?;
    scrape.gauge(
        "connection_limit",
        "Connections the socket serves at once (server.max_connections)",
        None,
        shared.max_connections,
    )?;
    scrape.counter(
        "connections_accepted",
        "Client connections accepted since start",
        None,
        stats.total.load(Relaxed),
    )?;
    let refused = vec![
        (Label("reason", "busy"), stats.refused_busy.load(Relaxed)),
        (Label("reason", "peer"), stats.refused_peer.load(Relaxed)),
    ];
    scrape.counters(
        "connections_refused",
        "Connections refused: over the cap (busy) or of another user (peer)",
        None,
        refused,
    )?;
    scrape.counter(
        "events_published",
        "Events published on the event bus since start",
        None,
        shared.events.last_seq(),
    )?;
    scrape.gauge(
        "event_subscribers",
        "Event subscribers (socket subscriptions and dashboard streams)",
        None,
        shared.events.subscribers(),
    )?;
    shared.http.collect(scrape)
}

/// Writes metrics read at scrape time: one call per metric, with all its
/// samples (a metric's samples must stay together).
pub(crate) struct Scrape<'a, 'e> {
    encoder: &'a mut DescriptorEncoder<'e>,
}

impl std::fmt::Debug for Scrape<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scrape")
    }
}

/// One metric's samples, by label set.
pub(crate) type Samples<L, V> = Vec<(L, V)>;

#[allow(clippy::needless_pass_by_value, reason = "the values are small numbers and short lists, built for the call")]
impl Scrape<'_, '_> {
    fn describe(
        &mut self,
        name: &'static str,
        help: &str,
        unit: Option<&'static Unit>,
        kind: MetricType,
    ) -> Result<MetricEncoder<'_>, std::fmt::Error> {
        self.encoder.encode_descriptor(name, help, unit, kind)
    }

    /// A gauge without labels.
    pub(crate) fn gauge(
        &mut self,
        name: &'static str,
        help: &str,
        unit: Option<&'static Unit>,
        value: impl EncodeGaugeValue,
    ) -> std::fmt::Result {
        self.describe(name, help, unit, MetricType::Gauge)?.encode_gauge(&value)
    }

    /// A gauge with one sample per label set.
    pub(crate) fn gauges<L: EncodeLabelSet, V: EncodeGaugeValue>(
        &mut self,
        name: &'static str,
        help: &str,
        unit: Option<&'static Unit>,
        samples: Samples<L, V>,
    ) -> std::fmt::Result {
        let mut metric = self.describe(name, help, unit, MetricType::Gauge)?;
        for (labels, value) in &samples {
            metric.encode_family(labels)?.encode_gauge(value)?;
        }
        Ok(())
    }

    /// A counter without labels (`name` without `_total`, which is added).
    pub(crate) fn counter(
        &mut self,
        name: &'static str,
        help: &str,
        unit: Option<&'static Unit>,
        value: u64,
    ) -> std::fmt::Result {
        self.describe(name, help, unit, MetricType::Counter)?.encode_counter::<NoLabelSet, _, u64>(&value, None)
    }

    /// A counter with one sample per label set.
    pub(crate) fn counters<L: EncodeLabelSet>(
        &mut self,
        name: &'static str,
        help: &str,
        unit: Option<&'static Unit>,
        samples: Samples<L, u64>,
    ) -> std::fmt::Result {
        let mut metric = self.describe(name, help, unit, MetricType::Counter)?;
        for (labels, value) in &samples {
            metric.encode_family(labels)?.encode_counter::<NoLabelSet, _, u64>(value, None)?;
        }
        Ok(())
    }

    /// A histogram with one sample per label set, from kept bucket counts.
    pub(crate) fn histograms<L: EncodeLabelSet>(
        &mut self,
        name: &'static str,
        help: &str,
        unit: Option<&'static Unit>,
        samples: Samples<L, Buckets>,
    ) -> std::fmt::Result {
        let mut metric = self.describe(name, help, unit, MetricType::Histogram)?;
        for (labels, buckets) in &samples {
            let pairs = buckets.pairs();
            metric.encode_family(labels)?.encode_histogram::<NoLabelSet>(buckets.sum, buckets.count(), &pairs, None)?;
        }
        Ok(())
    }

    /// An info metric: `name_info{labels} 1`.
    pub(crate) fn info(&mut self, name: &'static str, help: &str, labels: &impl EncodeLabelSet) -> std::fmt::Result {
        self.describe(name, help, None, MetricType::Info)?.encode_info(labels)
    }
}

/// A histogram kept by a service itself (the pools persist theirs):
/// per-bucket counts (not cumulative) for `bounds`, then one for `+Inf`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Buckets {
    pub(crate) bounds: &'static [f64],
    pub(crate) counts: Vec<u64>,
    pub(crate) sum: f64,
}

impl Buckets {
    /// Empty buckets for `bounds`.
    pub(crate) fn new(bounds: &'static [f64]) -> Self {
        Self { bounds, counts: vec![0; bounds.len() + 1], sum: 0.0 }
    }

    /// Counts one observation of `value`.
    pub(crate) fn observe(&mut self, value: f64) {
        let i = self.bounds.iter().position(|b| value <= *b).unwrap_or(self.bounds.len());
        if let Some(n) = self.counts.get_mut(i) {
            *n += 1;
        }
        self.sum += value;
    }

    pub(crate) fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    fn pairs(&self) -> Vec<(f64, u64)> {
        self.bounds.iter().copied().chain([f64::INFINITY]).zip(self.counts.iter().copied()).collect()
    }
}

/// A label set of one `name="value"` pair, for the scrape-time metrics.
#[derive(Debug, Clone)]
pub(crate) struct Label<'a>(pub(crate) &'static str, pub(crate) &'a str);

impl EncodeLabelSet for Label<'_> {
    fn encode(&self, encoder: &mut prometheus_client::encoding::LabelSetEncoder<'_>) -> std::fmt::Result {
        EncodeLabel::encode(&(self.0, self.1), encoder.encode_label())
    }
}

/// A label set of two pairs.
#[derive(Debug, Clone)]
pub(crate) struct Labels2<'a>(pub(crate) Label<'a>, pub(crate) Label<'a>);

impl EncodeLabelSet for Labels2<'_> {
    fn encode(&self, encoder: &mut prometheus_client::encoding::LabelSetEncoder<'_>) -> std::fmt::Result {
        EncodeLabel::encode(&(self.0.0, self.0.1), encoder.encode_label())?;
        EncodeLabel::encode(&(self.1.0, self.1.1), encoder.encode_label())
    }
}

/// The unit `seconds`, for scrape-time metrics.
pub(crate) const SECONDS: Option<&Unit> = Some(&Unit::Seconds);
/// The unit `bytes`.
pub(crate) const BYTES: Option<&Unit> = Some(&Unit::Bytes);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_count_each_observation_once_and_encode_cumulatively() {
        let mut b = Buckets::new(&[1.0, 10.0]);
        for v in [0.5, 1.0, 3.0, 11.0, 100.0] {
            b.observe(v);
        }
        assert_eq!(b.counts, [2, 1, 2]);
        assert_eq!(b.count(), 5);
        assert_eq!(b.pairs(), [(1.0, 2), (10.0, 1), (f64::INFINITY, 2)]);
        let mut out = String::new();
        let mut registry = Registry::default();
        #[derive(Debug)]
        struct One(Buckets);
        impl Collector for One {
            fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
                let mut scrape = Scrape { encoder: &mut encoder };
                scrape.histograms("x", "help", SECONDS, vec![(Label("pool", "a\"b"), self.0.clone())])
            }
        }
        registry.register_collector(Box::new(One(b)));
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        assert!(out.contains("x_seconds_bucket{le=\"10.0\",pool=\"a\\\"b\"} 3\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"+Inf\",pool=\"a\\\"b\"} 5\n"), "{out}");
        assert!(out.ends_with("# EOF\n"), "{out}");
    }

    #[test]
    fn request_types_come_from_the_list_never_from_the_frame() {
        use crate::protocol::status::StatusRequest;
        assert_eq!(request_type::<StatusRequest>(br#"{"type":"ping"}"#), Some("ping"));
        assert_eq!(request_type::<StatusRequest>(br#"{"x":1,"type":"sta\u0074us"}"#), Some("status"));
        assert_eq!(request_type::<StatusRequest>(br#"{"type":"nope"}"#), None);
    }

    #[test]
    fn every_request_type_has_its_series_from_the_start() {
        let metrics = Metrics::new();
        let text = metrics.encode(true).unwrap();
        for &channel in Channel::ALL {
            for kind in channel.visit(RequestTypes) {
                let series =
                    format!("hearth_request_duration_seconds_count{{channel=\"{channel}\",type=\"{kind}\"}} 0");
                assert!(text.contains(&series), "{series} in\n{text}");
            }
        }
        metrics.request(Channel::Status, "ping", Duration::from_micros(70));
        let text = metrics.encode(false).unwrap();
        assert!(
            text.contains("hearth_request_duration_seconds_bucket{channel=\"status\",type=\"ping\",le=\"0.0001\"} 1")
        );
        assert!(!text.contains("# EOF"), "the Prometheus text format has no EOF");
    }
}
