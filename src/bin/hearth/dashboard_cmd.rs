//! `hearth dashboard`: the web dashboard's URL, with its key, opened in a browser.

use std::path::Path;
use std::process::Stdio;

use hearth::protocol::info::DaemonInfo;
use hearth::protocol::status::StatusChannel;
use serde_json::json;

use crate::error::{CliError, EXIT_OK};
use crate::{Ctx, output};

/// The page the browser is given instead of the URL: its command line is
/// visible to every local user, the file (mode 0600) is not.
const OPENER_FILE: &str = "dashboard.html";

#[derive(Debug, clap::Args)]
pub(crate) struct DashboardArgs {
    /// Only print the URL; do not open a browser
    #[arg(long)]
    no_open: bool,
}

pub(crate) async fn dashboard(ctx: &Ctx, args: &DashboardArgs) -> Result<u8, CliError> {
    let client = ctx.connect_or_spawn::<StatusChannel>().await?;
    let pid = client.daemon().pid;
    let info: DaemonInfo = std::fs::read(ctx.paths.info_file())
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .filter(|info: &DaemonInfo| info.pid == pid)
        .ok_or_else(|| {
            CliError::new(
                "info_file_stale",
                format!("{} does not describe the daemon (pid {pid})", ctx.paths.info_file().display()),
            )
            .hint("`hearth doctor` says why")
        })?;
    let (Some(page), Some(secret)) = (info.endpoints.dashboard.as_deref(), info.dashboard_secret.as_deref()) else {
        return Err(CliError::new("dashboard_unavailable", "this daemon does not serve the dashboard")
            .hint("it is off (http.dashboard = false, http.enabled = false) or the HTTP server could not start; `hearth status` says why"));
    };
    let url = format!("{page}?token={secret}");
    let opened = if args.no_open { None } else { Some(open(ctx.paths.state_dir(), &url)) };
    if ctx.json {
        let opened = opened.as_ref().map(Result::is_ok);
        output::json(&json!({ "url": url, "pid": pid, "opened": opened }))?;
    } else {
        outln!("{url}");
    }
    if let Some(Err(why)) = opened {
        eprintln!("hearth: cannot open a browser ({why}); open the URL above yourself");
    }
    Ok(EXIT_OK)
}

/// Opens `url` in the user's browser through a private page that forwards
/// to it, so that the key never appears on a command line.
fn open(state_dir: &Path, url: &str) -> Result<(), String> {
    let page = state_dir.join(OPENER_FILE);
    let html = format!(
        "<!doctype html><meta charset=utf-8><meta http-equiv=refresh content=\"0;url={url}\">\
         <title>hearth</title><a href=\"{url}\">Open the hearth dashboard</a>\n"
    );
    hearth::daemon::fsutil::write_atomic(&page, html.as_bytes(), 0o600, false)
        .map_err(|e| format!("cannot write {}: {e}", page.display()))?;
    let opener = if cfg!(target_os = "macos") { "open" } else { "xdg-open" };
    let status = std::process::Command::new(opener)
        .arg(&page)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("{opener}: {e}"))?;
    if status.success() { Ok(()) } else { Err(format!("{opener} exited with {status}")) }
}
