//! `hearth events`: what the daemon's services do, live.

use hearth::client::Notice;
use hearth::protocol::Channel;
use hearth::protocol::event::{Event, EventData, EventFilter, EventKind};
use hearth::protocol::status::StatusChannel;

use crate::error::{CliError, EXIT_OK};
use crate::{Ctx, output};

#[derive(Debug, clap::Args)]
pub(crate) struct EventsArgs {
    /// Only some events: `service=queue`, `kind=job_state`, `id=42` (a job
    /// id, pool name or blob hash); repeat it or separate values with
    /// commas. Each key given must match; values of one key are
    /// alternatives.
    #[arg(long, short = 'f', value_name = "KEY=VALUE")]
    filter: Vec<String>,
}

/// Streams events until interrupted (or until the daemon stops).
pub(crate) async fn events(ctx: &Ctx, args: &EventsArgs) -> Result<u8, CliError> {
    let filter = parse_filter(&args.filter)?;
    let mut client = ctx.connect::<StatusChannel>().await?;
    client.subscribe(filter).await?;
    loop {
        let notice = tokio::select! {
            notice = client.next_event() => notice?,
            _ = tokio::signal::ctrl_c() => return Ok(EXIT_OK),
        };
        let line = match (&notice, ctx.json) {
            (Notice::Event(event), true) => serde_json::to_string(event).unwrap_or_default(),
            (Notice::Lagged { missed }, true) => serde_json::json!({ "lagged": missed }).to_string(),
            (Notice::Event(event), false) => describe(event),
            (Notice::Lagged { missed }, false) => format!("… {missed} events missed: this terminal fell behind"),
        };
        outln!("{line}");
    }
}

fn parse_filter(entries: &[String]) -> Result<EventFilter, CliError> {
    let mut filter = EventFilter::default();
    let bad = |message: String| {
        CliError::new("invalid_filter", message).hint("filters are service=NAME, kind=KIND and id=ID").exit(2)
    };
    for entry in entries {
        let Some((key, values)) = entry.split_once('=') else {
            return Err(bad(format!("{entry:?} is not KEY=VALUE")));
        };
        for value in values.split(',').filter(|v| !v.is_empty()) {
            match key {
                "service" => filter.services.push(
                    Channel::from_name(value)
                        .ok_or_else(|| bad(format!("no service {value:?}; services are {}", Channel::names())))?,
                ),
                "kind" => filter.kinds.push(EventKind::from_code(value)),
                "id" => filter.ids.push(value.to_owned()),
                other => return Err(bad(format!("unknown filter key {other:?}"))),
            }
        }
    }
    filter.check().map_err(bad)?;
    Ok(filter)
}

/// One line for a person: sequence, time, service, kind, what.
fn describe(event: &Event) -> String {
    let what = match &event.data {
        EventData::JobState { id, queue, from, to } => {
            let state = |s: &Option<hearth::protocol::queue::JobState>| s.map_or("-".into(), |s| s.to_string());
            format!("job {id} ({queue}): {} → {}", state(from), state(to))
        }
        EventData::PoolBuildStarted { pool, resource } => format!("{pool}: building {resource}"),
        EventData::PoolBuildEnded { pool, resource, ok, ms } => {
            format!(
                "{pool}: {resource} {} in {}",
                if *ok { "ready" } else { "failed" },
                output::duration(std::time::Duration::from_millis(*ms))
            )
        }
        EventData::PoolTake { pool, lease, warm } => {
            format!("{pool}: taken {} ({lease})", if *warm { "warm" } else { "cold" })
        }
        EventData::PoolRelease { pool, lease } => format!("{pool}: released {lease}"),
        EventData::BlobPut { hash, size, existed } => {
            format!("put {hash} ({}{})", output::bytes(*size), if *existed { ", already stored" } else { "" })
        }
        EventData::BlobDelete { hash, size } => format!("deleted {hash} ({})", output::bytes(*size)),
        EventData::BlobGc { removed, bytes } => format!("collected {removed} blobs ({})", output::bytes(*bytes)),
        EventData::ProcessState { name, from, to, pid } => {
            let state = |s: &Option<hearth::protocol::process::ProcessState>| s.map_or("-", |s| s.as_str());
            let pid = pid.map(|p| format!(" (pid {p})")).unwrap_or_default();
            format!("{name}: {} → {}{pid}", state(from), state(to))
        }
        EventData::HealthChanged { from, to, codes } => {
            let codes: Vec<String> = codes.iter().map(ToString::to_string).collect();
            format!("{} → {} {}", from.as_str(), to.as_str(), codes.join(", "))
        }
        EventData::Unknown => "(an event this hearth does not know)".into(),
    };
    let time = hearth::time::rfc3339_ms(event.at_ms);
    let clock = time.get(11..23).unwrap_or(&time);
    format!("#{:<6} {clock} {:<6} {:<18} {what}", event.seq, event.service.as_str(), event.data.kind().as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_and_refuse_what_they_cannot_serve() {
        let f = parse_filter(&["service=queue,pool".into(), "kind=job_state".into(), "id=42".into()]).unwrap();
        assert_eq!(f.services, vec![Channel::Queue, Channel::Pool]);
        assert_eq!(f.kinds, vec![EventKind::JobState]);
        assert_eq!(f.ids, vec!["42".to_owned()]);
        for bad in ["kind=nope", "service=nope", "color=red", "service"] {
            assert_eq!(parse_filter(&[bad.into()]).unwrap_err().code, "invalid_filter", "{bad}");
        }
    }
}
