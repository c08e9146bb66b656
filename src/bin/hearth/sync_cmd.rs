//! `hearth sync …` and `hearth settings …`: live documents.

use clap::Subcommand;
use hearth::client::{ClientError, SyncClient, SyncEvent, ensure_daemon_running};
use hearth::protocol::sync::{PatchOp, PathElem, SETTINGS_DOC, ValueKind, apply_patch, show_path};
use serde_json::{Value, json};

use crate::error::{CliError, EXIT_OK};
use crate::{Ctx, output};

const PATH_HELP: &str = "\
Paths: dot-separated steps from the document's root, where a step of digits is a list
index (cells.0.source), or a JSON array for keys with dots or digits ('[\"a.b\", \"0\"]').
An empty path (or none) is the whole document.";

#[derive(Debug, Subcommand)]
#[command(defer = true, after_help = PATH_HELP)]
pub(crate) enum SyncCommand {
    /// List the documents: name, loaded, peers, stored size
    Ls(LsArgs),
    /// Print a document (or the value at PATH) as JSON
    Get(GetArgs),
    /// Set the value at PATH (VALUE is read as JSON, else taken as a string)
    Set(SetArgs),
    /// Remove the key or list element at PATH
    Rm(RmArgs),
    /// Print each change of a document (or of PATH) as it happens, until interrupted
    Watch(WatchArgs),
    /// Show a document's room: peers (client, pid, mode), revision, store sizes
    Inspect(DocArg),
    /// Evict a document's room: its peers are disconnected and it unloads (it stays on disk)
    Close(DocArg),
}

#[derive(Debug, Subcommand)]
#[command(defer = true, after_help = PATH_HELP)]
pub(crate) enum SettingsCommand {
    /// Print the settings (or the value at PATH) as JSON
    Get(SettingsPath),
    /// Set a setting (VALUE is read as JSON, else taken as a string)
    Set(SettingsSet),
    /// Print each change of the settings as it happens, until interrupted
    Watch(SettingsPath),
}

#[derive(Debug, clap::Args)]
pub(crate) struct LsArgs {
    /// Only names starting with this
    prefix: Option<String>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct DocArg {
    /// The document (e.g. settings, notebook/3f2a)
    doc: String,
}

#[derive(Debug, clap::Args)]
pub(crate) struct GetArgs {
    /// The document
    doc: String,
    /// Where in it
    path: Option<String>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct SetArgs {
    /// The document (created if it does not exist)
    doc: String,
    /// Where in it: a map key (created if missing) or an existing list element
    path: String,
    /// The value: JSON (`42`, `true`, `{"a":1}`, `"quoted"`), else the text as a string
    value: String,
    /// Store the value as a text, counter or timestamp
    #[arg(long = "as", value_name = "KIND")]
    kind: Option<Kind>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Kind {
    Text,
    Counter,
    Timestamp,
}

#[derive(Debug, clap::Args)]
pub(crate) struct RmArgs {
    /// The document
    doc: String,
    /// The key or element to remove
    path: String,
}

#[derive(Debug, clap::Args)]
pub(crate) struct WatchArgs {
    /// The document
    doc: String,
    /// Only changes at or below this path
    path: Option<String>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct SettingsPath {
    /// Where in the settings
    path: Option<String>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct SettingsSet {
    /// Which setting
    path: String,
    /// The value: JSON, else the text as a string
    value: String,
}

pub(crate) async fn run(ctx: &Ctx, command: SyncCommand) -> Result<u8, CliError> {
    match command {
        SyncCommand::Ls(args) => ls(ctx, args.prefix.as_deref()).await,
        SyncCommand::Get(args) => get(ctx, &args.doc, args.path.as_deref()).await,
        SyncCommand::Set(args) => set(ctx, &args.doc, &args.path, &args.value, args.kind).await,
        SyncCommand::Rm(args) => rm(ctx, &args.doc, &args.path).await,
        SyncCommand::Watch(args) => watch(ctx, &args.doc, args.path.as_deref()).await,
        SyncCommand::Inspect(args) => inspect(ctx, &args.doc).await,
        SyncCommand::Close(args) => close(ctx, &args.doc).await,
    }
}

pub(crate) async fn settings(ctx: &Ctx, command: SettingsCommand) -> Result<u8, CliError> {
    match command {
        SettingsCommand::Get(args) => get(ctx, SETTINGS_DOC, args.path.as_deref()).await,
        SettingsCommand::Set(args) => set(ctx, SETTINGS_DOC, &args.path, &args.value, None).await,
        SettingsCommand::Watch(args) => watch(ctx, SETTINGS_DOC, args.path.as_deref()).await,
    }
}

/// Opens `doc` (or a control connection), starting the daemon when none runs.
async fn open(ctx: &Ctx, doc: Option<&str>) -> Result<SyncClient, CliError> {
    let options = ctx.connect_options();
    let connect = || async {
        match doc {
            Some(doc) => SyncClient::open_with(&options, doc).await,
            None => SyncClient::control(&options).await,
        }
    };
    match connect().await {
        Err(e) if e.is_not_running() && !ctx.no_spawn => {
            ensure_daemon_running(&ctx.ensure_options()).await?;
            Ok(connect().await?)
        }
        other => Ok(other?),
    }
}

/// Parses a path argument: a JSON array, or dot-separated steps.
fn parse_path(text: Option<&str>) -> Result<Vec<PathElem>, CliError> {
    let Some(text) = text.map(str::trim).filter(|t| !t.is_empty()) else { return Ok(Vec::new()) };
    if text.starts_with('[') {
        return serde_json::from_str(text).map_err(|e| {
            CliError::new("invalid_path", format!("{text:?} is not a JSON array of keys and indices: {e}"))
        });
    }
    Ok(text
        .split('.')
        .map(|step| match step.parse::<u64>() {
            Ok(i) if !step.is_empty() => PathElem::Index(i),
            _ => PathElem::Key(step.to_owned()),
        })
        .collect())
}

/// VALUE as JSON when it parses, else as a string.
fn parse_value(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

async fn ls(ctx: &Ctx, prefix: Option<&str>) -> Result<u8, CliError> {
    let mut client = open(ctx, None).await?;
    let docs = client.list(prefix).await?;
    if ctx.json {
        output::json(&docs)?;
        return Ok(EXIT_OK);
    }
    if docs.is_empty() {
        outln!("no documents");
    }
    for d in docs {
        let state = if d.loaded { format!("loaded, {} peers", d.peers) } else { "on disk".into() };
        outln!("{:<40} {:>10}  {state}", d.doc.as_str(), output::bytes(d.stored_bytes));
    }
    Ok(EXIT_OK)
}

async fn get(ctx: &Ctx, doc: &str, path: Option<&str>) -> Result<u8, CliError> {
    let path = parse_path(path)?;
    let mut client = open(ctx, Some(doc)).await?;
    let (revision, value) = client.get(&path).await?;
    if ctx.json {
        output::json(&json!({"doc": doc, "path": path, "revision": revision, "value": value}))?;
    } else {
        output::json(&value)?;
    }
    Ok(EXIT_OK)
}

async fn set(ctx: &Ctx, doc: &str, path: &str, value: &str, kind: Option<Kind>) -> Result<u8, CliError> {
    let path = parse_path(Some(path))?;
    let kind = kind.map(|k| match k {
        Kind::Text => ValueKind::Text,
        Kind::Counter => ValueKind::Counter,
        Kind::Timestamp => ValueKind::Timestamp,
    });
    let mut client = open(ctx, Some(doc)).await?;
    let op = PatchOp::Put { path: path.clone(), value: parse_value(value), kind };
    let written = client.write(vec![op], None).await?;
    if ctx.json {
        output::json(&json!({"doc": doc, "path": path, "revision": written.revision}))?;
    } else {
        outln!("set {doc} {} (revision {})", show_path(&path), written.revision);
    }
    Ok(EXIT_OK)
}

async fn rm(ctx: &Ctx, doc: &str, path: &str) -> Result<u8, CliError> {
    let path = parse_path(Some(path))?;
    let mut client = open(ctx, Some(doc)).await?;
    let written = client.delete(&path).await?;
    if ctx.json {
        output::json(&json!({"doc": doc, "path": path, "revision": written.revision}))?;
    } else {
        outln!("removed {doc} {} (revision {})", show_path(&path), written.revision);
    }
    Ok(EXIT_OK)
}

async fn watch(ctx: &Ctx, doc: &str, path: Option<&str>) -> Result<u8, CliError> {
    let path = parse_path(path)?;
    let mut client = open(ctx, Some(doc)).await?;
    let (revision, value) = client.watch(&path, None).await?;
    let mut value = value.unwrap_or(Value::Null);
    if ctx.json {
        outln!("{}", json!({"event": "start", "revision": revision, "value": value}));
    } else {
        outln!("{doc} {} at {revision}:", show_path(&path));
        output::json(&value)?;
    }
    loop {
        let event = match client.next_event().await {
            Ok(event) => event,
            Err(ClientError::Closed) => return Err(CliError::new("connection_closed", "the daemon closed the watch")),
            Err(e) => return Err(e.into()),
        };
        match event {
            SyncEvent::Changed { revision, patches, .. } => {
                for patch in &patches {
                    // The copy stays current for `snapshot`-less output; a
                    // patch outside the watched value cannot happen.
                    let _ = apply_patch(&mut value, &path, patch);
                }
                if ctx.json {
                    outln!("{}", json!({"event": "changed", "revision": revision, "patches": patches}));
                } else {
                    for patch in &patches {
                        outln!("{}", describe(patch));
                    }
                }
            }
            SyncEvent::Snapshot { revision, value: fresh } => {
                value = fresh;
                if ctx.json {
                    outln!("{}", json!({"event": "snapshot", "revision": revision, "value": value}));
                } else {
                    outln!("(caught up at {revision})");
                    output::json(&value)?;
                }
            }
            SyncEvent::Presence(peers) => {
                if ctx.json {
                    outln!("{}", json!({"event": "presence", "peers": peers}));
                } else {
                    let who: Vec<String> = peers
                        .iter()
                        .map(|p| format!("{} ({})", p.client.as_deref().unwrap_or("?"), p.mode.as_str()))
                        .collect();
                    outln!("peers: {}", who.join(", "));
                }
            }
        }
    }
}

/// `put ["theme"] = "dark"`, one line per patch.
fn describe(patch: &PatchOp) -> String {
    let path = show_path(patch.path());
    match patch {
        PatchOp::Put { value, .. } => format!("put {path} = {value}"),
        PatchOp::Delete { count, .. } => match count {
            Some(n) => format!("delete {path} ({n})"),
            None => format!("delete {path}"),
        },
        PatchOp::Insert { values, .. } => format!("insert {path} {}", Value::Array(values.clone())),
        PatchOp::Splice { index, delete, insert, .. } => {
            format!("splice {path} at {index}: -{delete} +{}", Value::String(insert.clone()))
        }
        PatchOp::Increment { by, .. } => format!("increment {path} by {by}"),
    }
}

async fn inspect(ctx: &Ctx, doc: &str) -> Result<u8, CliError> {
    let mut client = open(ctx, None).await?;
    let report = client.inspect(Some(doc)).await?;
    if ctx.json {
        output::json(&report)?;
        return Ok(EXIT_OK);
    }
    let mut rows = vec![
        ("document", report.doc.to_string()),
        ("loaded", report.loaded.to_string()),
        (
            "stored",
            format!(
                "{} ({} appended since compaction)",
                output::bytes(report.stored_bytes),
                output::bytes(report.appended_bytes)
            ),
        ),
    ];
    if let Some(revision) = &report.revision {
        rows.push(("revision", revision.to_string()));
    }
    if let Some(changes) = report.changes {
        rows.push(("changes", changes.to_string()));
    }
    rows.push(("peers", report.peers.len().to_string()));
    output::fields(&rows);
    for p in &report.peers {
        let pid = p.pid.map_or("-".into(), |pid| pid.to_string());
        outln!(
            "  #{:<5} {:<8} pid {:<8} {}  since {}",
            p.id,
            p.mode.as_str(),
            pid,
            p.client.as_deref().unwrap_or("-"),
            p.since
        );
    }
    Ok(EXIT_OK)
}

async fn close(ctx: &Ctx, doc: &str) -> Result<u8, CliError> {
    let mut client = open(ctx, None).await?;
    let peers = client.close(doc).await?;
    if ctx.json {
        output::json(&json!({"doc": doc, "peers_disconnected": peers}))?;
    } else {
        outln!("closed {doc} ({peers} peers disconnected)");
    }
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse_both_ways() {
        assert!(parse_path(None).unwrap().is_empty());
        assert_eq!(
            parse_path(Some("cells.0.source")).unwrap(),
            vec![PathElem::Key("cells".into()), PathElem::Index(0), PathElem::Key("source".into())]
        );
        assert_eq!(
            parse_path(Some(r#"["a.b", "0"]"#)).unwrap(),
            vec![PathElem::Key("a.b".into()), PathElem::Key("0".into())]
        );
        assert!(parse_path(Some("[nope")).is_err());
        assert_eq!(parse_value("42"), json!(42));
        assert_eq!(parse_value("dark"), json!("dark"));
        assert_eq!(parse_value(r#"{"a":1}"#), json!({"a": 1}));
    }
}
