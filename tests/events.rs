//! Event subscriptions: the client library against the real `hearthd`
//! (jobs, blobs, pools doing real work), a subscriber that stops reading,
//! resuming after a reconnect, and `hearth events` as a person runs it.
//! The raw frames are in tests/conformance/events.json.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use common::{RawConn, StateDir, within};
use hearth::client::{BlobClient, Notice, PoolClient, PutOptions, QueueClient, StatusClient};
use hearth::protocol::Channel;
use hearth::protocol::event::{Event, EventData, EventFilter, EventKind};
use hearth::protocol::pool::PoolDefinition;
use hearth::protocol::queue::{JobSpec, JobState};
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(20);

fn job(argv: &[&str]) -> JobSpec {
    JobSpec { argv: argv.iter().map(|s| (*s).to_owned()).collect(), ..JobSpec::default() }
}

/// The next event (lag notices fail the test).
async fn next(client: &mut StatusClient, what: &str) -> Event {
    match within(LONG, what, client.next_event()).await.unwrap() {
        Notice::Event(event) => event,
        Notice::Lagged { missed } => panic!("lagged by {missed} while waiting for {what}"),
    }
}

#[tokio::test]
async fn every_service_tells_what_it_did_in_order() {
    let state = StateDir::new();
    let _daemon = state.start(&[]);
    let mut events = StatusClient::connect(state.socket()).await.unwrap();
    let start = events.subscribe(EventFilter::default()).await.unwrap();

    let mut queue = QueueClient::connect(state.socket()).await.unwrap();
    let id = queue.submit(job(&["true"])).await.unwrap().job.id;
    within(LONG, "the job's end", queue.wait(id, |_| {})).await.unwrap();
    let mut states = Vec::new();
    let mut last_seq = start;
    while states.len() < 3 {
        let event = next(&mut events, "the job's three state changes").await;
        assert_eq!(event.seq, last_seq + 1, "sequence numbers grow by one: {event:?}");
        last_seq = event.seq;
        if let EventData::JobState { id: of, from, to, .. } = event.data {
            assert_eq!((of, event.service), (id, Channel::Queue));
            states.push((from, to));
        }
    }
    use JobState::{Queued, Running, Succeeded};
    assert_eq!(states, vec![(None, Some(Queued)), (Some(Queued), Some(Running)), (Some(Running), Some(Succeeded))]);

    let mut blob = BlobClient::connect(state.socket()).await.unwrap();
    let stored = blob.put_bytes(b"an event", PutOptions::new()).await.unwrap();
    let put = next(&mut events, "the blob put").await;
    assert_eq!(put.data, EventData::BlobPut { hash: stored.hash.to_string(), size: 8, existed: false });
    blob.delete(&stored.hash, false).await.unwrap();
    let deleted = next(&mut events, "the blob delete").await;
    assert_eq!(deleted.data, EventData::BlobDelete { hash: stored.hash.to_string(), size: 8 });

    let mut pool = PoolClient::connect(state.socket()).await.unwrap();
    let definition =
        PoolDefinition { name: "scratch".into(), create: Some(vec!["true".into()]), size: 0, ..Default::default() };
    pool.define(definition).await.unwrap();
    let lease = pool.take("scratch").await.unwrap();
    pool.release(&lease.lease, false).await.unwrap();
    let mut kinds = Vec::new();
    while kinds.last() != Some(&EventKind::PoolRelease) {
        let event = next(&mut events, "the pool's build, take and release").await;
        assert_eq!(event.service, Channel::Pool);
        kinds.push(event.data.kind());
    }
    assert_eq!(
        kinds,
        vec![EventKind::PoolBuildStarted, EventKind::PoolBuildEnded, EventKind::PoolTake, EventKind::PoolRelease]
    );

    // Ending the subscription gives the connection back.
    events.unsubscribe().await.unwrap();
    events.ping().await.unwrap();
}

#[tokio::test]
async fn filters_pick_by_service_kind_and_subject() {
    let state = StateDir::new();
    let _daemon = state.start(&[]);
    let mut queue = QueueClient::connect(state.socket()).await.unwrap();
    let first = queue.submit(job(&["true"])).await.unwrap().job.id;

    let mut events = StatusClient::connect(state.socket()).await.unwrap();
    let wanted = first + 1;
    let filter = EventFilter { kinds: vec![EventKind::JobState], ids: vec![wanted.to_string()], ..Default::default() };
    events.subscribe(filter).await.unwrap();
    let second = queue.submit(job(&["true"])).await.unwrap().job.id;
    assert_eq!(second, wanted);
    let event = next(&mut events, "an event of the second job").await;
    let EventData::JobState { id, .. } = event.data else { panic!("{event:?}") };
    assert_eq!(id, wanted, "only the subject asked for");
}

#[tokio::test]
async fn a_reconnecting_subscriber_resumes_where_it_was() {
    let state = StateDir::new();
    let _daemon = state.start(&[]);
    let mut events = StatusClient::connect(state.socket()).await.unwrap();
    events.subscribe(EventFilter::default()).await.unwrap();
    let mut queue = QueueClient::connect(state.socket()).await.unwrap();
    let id = queue.submit(job(&["true"])).await.unwrap().job.id;
    let seen = next(&mut events, "the submit's event").await.seq;
    drop(events);
    within(LONG, "the job's end", queue.wait(id, |_| {})).await.unwrap();

    let mut again = StatusClient::connect(state.socket()).await.unwrap();
    again.subscribe_since(Some(seen), EventFilter::default()).await.unwrap();
    let running = next(&mut again, "the replayed start").await;
    let finished = next(&mut again, "the replayed end").await;
    assert_eq!((running.seq, finished.seq), (seen + 1, seen + 2), "nothing missed, nothing twice");
    assert!(matches!(finished.data, EventData::JobState { to: Some(JobState::Succeeded), .. }));
}

#[tokio::test]
async fn a_subscriber_that_falls_behind_is_told_what_it_missed_and_the_rest_go_on() {
    // Enough events to fill the slow subscriber's socket and the daemon's
    // buffer of 64 behind it many times over.
    const EVENTS: u64 = 3000;
    let state = StateDir::new();
    state.write_config("[daemon]\nevent_buffer = 64\n");
    let _daemon = state.start(&[]);
    let mut slow = StatusClient::connect(state.socket()).await.unwrap();
    let start = slow.subscribe(EventFilter::default()).await.unwrap();
    let mut reader = StatusClient::connect(state.socket()).await.unwrap();
    assert_eq!(reader.subscribe(EventFilter::default()).await.unwrap(), start);
    let reading = tokio::spawn(async move { drain(&mut reader, start + EVENTS).await });

    let mut queue = QueueClient::connect(state.socket()).await.unwrap();
    let in_a_day = hearth::time::now_ms() + 86_400_000;
    for _ in 0..EVENTS {
        let spec = JobSpec { run_at_ms: Some(in_a_day), ..job(&["true"]) };
        queue.submit(spec).await.unwrap();
    }
    let (read, read_missed) = within(LONG, "the reader's last event", reading).await.unwrap();
    assert_eq!(read + read_missed, EVENTS, "the reader got or was told of every event");
    // The slow one only now reads what the daemon kept for it.
    let (got, missed) = within(LONG, "the slow subscriber's backlog", drain(&mut slow, start + EVENTS)).await;
    assert!(missed > 0, "{EVENTS} events past a stalled reader: some were missed ({got} arrived)");
    assert_eq!(got + missed, EVENTS, "every event either arrives or is counted as missed");
}

/// Reads a subscription up to the event numbered `last`: how many events
/// arrived, and how many were reported missed. Sequence numbers must grow.
async fn drain(client: &mut StatusClient, last: u64) -> (u64, u64) {
    let (mut got, mut missed, mut seq) = (0, 0, 0);
    while seq < last {
        match client.next_event().await.unwrap() {
            Notice::Lagged { missed: n } => missed += n,
            Notice::Event(event) => {
                assert!(event.seq > seq, "in order: {} after {seq}", event.seq);
                seq = event.seq;
                got += 1;
            }
        }
    }
    (got, missed)
}

#[test]
fn a_subscription_has_no_idle_timeout_and_ends_with_the_daemon() {
    let state = StateDir::new();
    let mut daemon = state.start(&["--connection-idle-timeout", "300ms"]);
    let mut raw = RawConn::open(state.socket(), "status");
    assert_eq!(raw.request(&json!({"type": "subscribe", "kinds": ["job_state"]}))["type"], "subscribed");
    // A plain connection opened after it idles out; the subscription,
    // idle for longer, still stands: a job's event arrives.
    let mut other = RawConn::open(state.socket(), "status");
    assert_eq!(
        other.read_json().map(|v| v["code"].clone()),
        Some(json!("idle_timeout")),
        "a plain connection idles out"
    );
    let mut queue = RawConn::open(state.socket(), "queue");
    assert_eq!(queue.request(&json!({"type": "submit", "argv": ["true"]}))["type"], "submitted");
    let event = raw.read_json().expect("an event after the idle timeouts");
    assert_eq!((event["type"].clone(), event["kind"].clone()), (json!("event"), json!("job_state")));
    drop(queue);
    daemon.stop();
    let mut last = Value::Null;
    while let Some(frame) = raw.read_json() {
        last = frame;
    }
    assert_eq!(last["code"], "shutting_down", "a stopping daemon ends the subscription with a word");
}

#[test]
fn hearth_events_prints_each_event_as_it_happens() {
    let state = StateDir::new();
    let _daemon = state.start(&[]);
    let mut child = state
        .hearth()
        .args(["--json", "events", "--filter", "kind=job_state"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // The subscription is up once the daemon counts the connection.
    assert!(
        common::wait_for(LONG, || {
            let status = common::stdout(&state.run(&["--json", "status"]));
            serde_json::from_str::<Value>(&status).is_ok_and(|s| s["connections"]["active"].as_u64() >= Some(2))
        }),
        "hearth events never connected"
    );
    let out = state.run(&["--json", "queue", "submit", "--", "true"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let line = lines.next().expect("a line").expect("read");
    let event: Value = serde_json::from_str(&line).unwrap();
    assert_eq!((event["kind"].clone(), event["to"].clone()), (json!("job_state"), json!("queued")));
    let _ = child.kill();
    common::wait_child(&mut child, LONG, "hearth events after SIGKILL");

    let bad = state.run(&["events", "--filter", "kind=moon_phase"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(common::stderr(&bad).contains("invalid_filter"), "{}", common::stderr(&bad));
}
