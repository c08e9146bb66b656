//! `hearth blob …`: the blob channel.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use hearth::client::{BlobClient, BlockingIo, PutOptions};
use hearth::protocol::blob::{BlobChannel, BlobHash, BlobInfo, Usage};
use hearth::units::ByteSize;
use serde_json::json;

use crate::error::{CliError, EXIT_OK};
use crate::progress::{Progress, ProgressRead, ProgressWrite};
use crate::stdin_read::StdinRead;
use crate::{Ctx, output};

#[derive(Debug, clap::Subcommand)]
#[command(defer = true)]
pub(crate) enum BlobCommand {
    /// Store a file (or stdin, with `-`) and print its hash
    Put(PutArgs),
    /// Write a blob to stdout, or to a file with -o
    Get(GetArgs),
    /// Show a blob's metadata; without HASH, the store's totals and budget
    Stat {
        /// The blob (`sha256:<hex>` or the 64 hex digits alone)
        hash: Option<String>,
    },
    /// Print a blob's URL on the HTTP read server
    Url {
        /// The blob
        hash: String,
    },
    /// List stored blobs (in hash order)
    Ls {
        /// Show at most this many
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
    },
    /// Delete blobs
    Rm {
        /// The blobs
        #[arg(required = true)]
        hashes: Vec<String>,
        /// Delete pinned blobs too
        #[arg(long)]
        force: bool,
    },
    /// Pin blobs: garbage collection never removes them
    Pin {
        /// The blobs
        #[arg(required = true)]
        hashes: Vec<String>,
    },
    /// Unpin blobs
    Unpin {
        /// The blobs
        #[arg(required = true)]
        hashes: Vec<String>,
    },
    /// Remove least-recently-used unpinned blobs until the store fits its budget
    Gc {
        /// Collect down to this size instead of the budget (e.g. 10GiB, 0)
        #[arg(long, value_name = "SIZE")]
        target: Option<ByteSize>,
    },
}

#[derive(Debug, clap::Args)]
pub(crate) struct PutArgs {
    /// The file to store; `-` reads stdin
    file: PathBuf,
    /// Media type, e.g. image/png [default: guessed from the file's extension (png, jpg, pdf, json,
    /// txt… as listed in the README); none for stdin or another extension]
    #[arg(long, value_name = "TYPE")]
    media_type: Option<String>,
    /// A name for people [default: the file's name]
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Pin the blob so that garbage collection never removes it
    #[arg(long)]
    pin: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct GetArgs {
    /// The blob (`sha256:<hex>` or the 64 hex digits alone)
    hash: String,
    /// Write to FILE (atomically: complete or not at all) instead of stdout;
    /// with --json, then print the hash, size and path
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
}

pub(crate) async fn run(ctx: &Ctx, command: BlobCommand) -> Result<u8, CliError> {
    let mut client = ctx.connect_or_spawn::<BlobChannel>().await?;
    match command {
        BlobCommand::Put(args) => put(ctx, &mut client, args).await,
        BlobCommand::Get(args) => get(ctx, &mut client, args).await,
        BlobCommand::Stat { hash: Some(hash) } => {
            let info = client.stat(&parse_hash(&hash)?).await?;
            if ctx.json {
                output::json(&info)?;
            } else {
                print_info(&info);
            }
            Ok(EXIT_OK)
        }
        BlobCommand::Stat { hash: None } => {
            let usage = client.usage().await?;
            if ctx.json {
                output::json(&usage)?;
            } else {
                print_usage(&usage);
            }
            Ok(EXIT_OK)
        }
        BlobCommand::Url { hash } => {
            let hash = parse_hash(&hash)?;
            client.stat(&hash).await?;
            let Some(base) = client.usage().await?.http_url else {
                return Err(CliError::new("http_unavailable", "the blob HTTP server is not running")
                    .hint("it is disabled (blob.http = false) or could not start; `hearth status` says why"));
            };
            let url = format!("{base}/blob/{hash}");
            if ctx.json {
                output::json(&json!({ "hash": hash, "url": url }))?;
            } else {
                outln!("{url}");
            }
            Ok(EXIT_OK)
        }
        BlobCommand::Ls { limit } => ls(ctx, &mut client, limit).await,
        BlobCommand::Rm { hashes, force } => {
            let hashes = parse_hashes(&hashes)?;
            let mut deleted = Vec::new();
            for hash in hashes {
                let size = client.delete(&hash, force).await?;
                if !ctx.json {
                    outln!("deleted {hash} ({})", output::bytes(size));
                }
                deleted.push(json!({ "hash": hash, "size": size }));
            }
            if ctx.json {
                output::json(&deleted)?;
            }
            Ok(EXIT_OK)
        }
        BlobCommand::Pin { hashes } => set_pinned(ctx, &mut client, &hashes, true).await,
        BlobCommand::Unpin { hashes } => set_pinned(ctx, &mut client, &hashes, false).await,
        BlobCommand::Gc { target } => {
            let report = client.gc(target.map(|t| t.0)).await?;
            if ctx.json {
                output::json(&report)?;
            } else {
                outln!("removed {} blobs, freed {}", report.removed, output::bytes(report.freed_bytes));
                print_usage(&report.usage);
            }
            Ok(EXIT_OK)
        }
    }
}

/// `sha256:<hex>` or bare hex, in either case.
fn parse_hash(text: &str) -> Result<BlobHash, CliError> {
    let text = text.trim().to_ascii_lowercase();
    let full = if text.len() == 64 { format!("sha256:{text}") } else { text };
    BlobHash::parse(&full)
        .map_err(|e| CliError::new("invalid_hash", e.to_string()).hint("`hearth blob ls` lists the stored hashes"))
}

fn parse_hashes(texts: &[String]) -> Result<Vec<BlobHash>, CliError> {
    texts.iter().map(|t| parse_hash(t)).collect()
}

fn io_error(what: &str, path: &Path, e: &std::io::Error) -> CliError {
    CliError::new("io_error", format!("cannot {what} {}: {e}", path.display()))
}

async fn put(ctx: &Ctx, client: &mut BlobClient, args: PutArgs) -> Result<u8, CliError> {
    let mut options = PutOptions::new().pin(args.pin);
    let stdin = args.file.as_os_str() == "-";
    let media_type = args.media_type.or_else(|| (!stdin).then(|| guess_media_type(&args.file)).flatten());
    if let Some(media_type) = media_type {
        options = options.media_type(media_type);
    }
    let name = args
        .name
        .or_else(|| (!stdin).then(|| args.file.file_name().map(|n| n.to_string_lossy().into_owned())).flatten());
    if let Some(name) = name {
        options = options.name(name);
    }
    let stored = if stdin {
        let mut progress = Progress::new("put", None);
        let stdin = StdinRead::spawn().map_err(|e| CliError::new("io_error", format!("cannot read stdin: {e}")))?;
        let reader = ProgressRead { inner: stdin, progress: &mut progress };
        client.put_reader(reader, options).await?
    } else {
        let file = std::fs::File::open(&args.file).map_err(|e| io_error("open", &args.file, &e))?;
        let meta = file.metadata().map_err(|e| io_error("stat", &args.file, &e))?;
        if !meta.is_file() {
            return Err(CliError::new("io_error", format!("{} is not a regular file", args.file.display())));
        }
        let mut progress = Progress::new("put", Some(meta.len()));
        let reader = ProgressRead { inner: BlockingIo(file), progress: &mut progress };
        let stored = client.put_reader(reader, options.size(meta.len())).await?;
        progress.finish();
        stored
    };
    if ctx.json {
        output::json(&stored)?;
    } else {
        outln!("{}", stored.hash);
    }
    Ok(EXIT_OK)
}

async fn get(ctx: &Ctx, client: &mut BlobClient, args: GetArgs) -> Result<u8, CliError> {
    let hash = parse_hash(&args.hash)?;
    let size = client.stat(&hash).await?.size;
    let Some(path) = args.output.filter(|p| p.as_os_str() != "-") else {
        let to_terminal = std::io::stdout().is_terminal();
        let mut progress = Progress::new("get", (!to_terminal).then_some(size));
        let writer = ProgressWrite { inner: BlockingIo(output::Stdout), progress: &mut progress };
        client.get_to_writer(&hash, None, writer).await?;
        progress.finish();
        return Ok(EXIT_OK);
    };
    // Into a temp file beside the target, renamed over it once complete.
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "blob".into());
    let temp = dir.join(format!(".{file_name}.hearth-{}", std::process::id()));
    let file = std::fs::File::create(&temp).map_err(|e| io_error("create", &temp, &e))?;
    let mut progress = Progress::new("get", Some(size));
    let result = async {
        let writer = ProgressWrite { inner: BlockingIo(file), progress: &mut progress };
        client.get_to_writer(&hash, None, writer).await?;
        std::fs::rename(&temp, &path).map_err(|e| io_error("create", &path, &e))
    }
    .await;
    if let Err(e) = result {
        let _ = std::fs::remove_file(&temp);
        return Err(e);
    }
    progress.finish();
    if ctx.json {
        output::json(&json!({ "hash": hash, "size": size, "path": path }))?;
    }
    Ok(EXIT_OK)
}

async fn ls(ctx: &Ctx, client: &mut BlobClient, limit: Option<usize>) -> Result<u8, CliError> {
    let mut blobs: Vec<BlobInfo> = Vec::new();
    let mut cursor = None;
    loop {
        let want = limit.map_or(1000, |l| l.saturating_sub(blobs.len()).min(1000));
        if want == 0 {
            break;
        }
        let page = client.list(cursor, Some(want as u32)).await?;
        blobs.extend(page.blobs);
        cursor = page.next_cursor;
        if cursor.is_none() {
            break;
        }
    }
    if ctx.json {
        return output::json(&blobs).map(|()| EXIT_OK);
    }
    if blobs.is_empty() {
        outln!("no blobs");
        return Ok(EXIT_OK);
    }
    outln!("{:<71}  {:>10}  {:<6}  {:<24}  NAME", "HASH", "SIZE", "PINNED", "LAST ACCESS");
    for b in &blobs {
        outln!(
            "{:<71}  {:>10}  {:<6}  {:<24}  {}",
            b.hash,
            output::bytes(b.size),
            if b.pinned { "yes" } else { "no" },
            hearth::time::rfc3339_ms(b.last_access_at_ms),
            b.name.as_deref().unwrap_or("-")
        );
    }
    Ok(EXIT_OK)
}

async fn set_pinned(ctx: &Ctx, client: &mut BlobClient, hashes: &[String], pinned: bool) -> Result<u8, CliError> {
    let hashes = parse_hashes(hashes)?;
    for hash in &hashes {
        client.set_pinned(hash, pinned).await?;
        if !ctx.json {
            outln!("{hash} {}", if pinned { "pinned" } else { "unpinned" });
        }
    }
    if ctx.json {
        let states: Vec<_> = hashes.iter().map(|h| json!({ "hash": h, "pinned": pinned })).collect();
        output::json(&states)?;
    }
    Ok(EXIT_OK)
}

fn print_info(b: &BlobInfo) {
    outln!("{}", b.hash);
    output::fields(&[
        ("size", format!("{} ({} bytes)", output::bytes(b.size), b.size)),
        ("media type", b.media_type.clone().unwrap_or_else(|| "-".into())),
        ("name", b.name.clone().unwrap_or_else(|| "-".into())),
        ("pinned", if b.pinned { "yes".into() } else { "no".into() }),
        ("created", hearth::time::rfc3339_ms(b.created_at_ms)),
        ("last access", hearth::time::rfc3339_ms(b.last_access_at_ms)),
    ]);
}

pub(crate) fn print_usage(u: &Usage) {
    output::fields(&[
        ("blobs", format!("{} ({})", u.count, output::bytes(u.bytes))),
        ("pinned", format!("{} ({})", u.pinned_count, output::bytes(u.pinned_bytes))),
        ("budget", u.budget_bytes.map_or_else(|| "unlimited".into(), output::bytes)),
        ("http", u.http_url.clone().unwrap_or_else(|| "not running".into())),
    ]);
}

/// A media type for common extensions, so that `hearth blob put photo.png`
/// is served as an image without `--media-type`.
fn guess_media_type(path: &Path) -> Option<String> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    let media_type = match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "avif" => "image/avif",
        "svg" => "image/svg+xml",
        "pdf" => "application/pdf",
        "json" => "application/json",
        "txt" | "log" => "text/plain",
        "csv" => "text/csv",
        "md" => "text/markdown",
        "html" | "htm" => "text/html",
        "mp3" => "audio/mpeg",
        "wav" => "audio/wav",
        "ogg" => "audio/ogg",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "zip" => "application/zip",
        "gz" => "application/gzip",
        "tar" => "application/x-tar",
        "wasm" => "application/wasm",
        _ => return None,
    };
    Some(media_type.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_are_guessed_from_the_extension_in_any_case() {
        let guess = |name: &str| guess_media_type(Path::new(name));
        assert_eq!(guess("plot.png").as_deref(), Some("image/png"));
        assert_eq!(guess("dir.d/PHOTO.JPEG").as_deref(), Some("image/jpeg"));
        assert_eq!(guess("notes.Md").as_deref(), Some("text/markdown"));
        assert_eq!(guess("archive.tar.gz").as_deref(), Some("application/gzip"));
        assert_eq!(guess("page.html").as_deref(), Some("text/html"), "stored as given; served as octet-stream");
        for none in ["data.bin", "README", ".png", "archive.tgz", "png"] {
            assert_eq!(guess(none), None, "{none}");
        }
    }
}
