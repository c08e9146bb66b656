//! `hearth top`: the daemon at a glance, live, in the terminal.
//!
//! [`feed`] keeps the link to the daemon (events, snapshots, actions),
//! [`model`] holds what is known, [`view`] draws it, [`screen`] owns the
//! terminal's modes. This file is the loop between them and the keyboard.

mod feed;
mod model;
mod screen;
mod view;

use std::io::IsTerminal;
use std::time::Duration;

use crossterm::event::{Event, EventStream, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use futures_util::StreamExt;
use hearth::protocol::status::StatusChannel;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio::time::Instant;

use self::feed::Feed;
use self::model::{Mode, Model};
use self::screen::Screen;
use crate::Ctx;
use crate::error::{CliError, EXIT_OK};

pub(crate) const TOP_HELP: &str = "\
Keys: up/down (k/j), PgUp/PgDn, Home/End select a job; c cancels it (after
a y); r retries it when it is dead; ? shows every key; q or Esc quits.
Until moved, the selection is the first row; then it follows its job.

The screen follows the daemon's events and reads a full snapshot every
second. `hearth top` never starts a daemon: when none runs it exits with
status 3. When the daemon stops while it runs, the header says so in red,
the last figures stay on screen (dimmed), and it waits for a daemon to
answer again on the same socket (after `hearth daemon restart`, say), then
carries on; q quits meanwhile.

Exit status: 0 when quit with a key, 3 when no daemon runs at the start,
128+N when signal N (SIGTERM, SIGHUP, SIGINT) ended it, 1 on any other
error. The terminal is restored in every case.";

/// The shortest time between two frames: events arriving by the thousand
/// are drawn twenty times a second, not a thousand.
const FRAME: Duration = Duration::from_millis(50);
/// Updates taken from the feed before the screen is drawn again.
const BATCH: usize = 1024;

pub(crate) async fn top(ctx: &Ctx) -> Result<u8, CliError> {
    if ctx.json {
        return Err(CliError::new("invalid_argument", "hearth top draws on a terminal; it has no JSON form")
            .hint("`hearth events --json` streams what happens; `hearth status --json` is a snapshot")
            .exit(2));
    }
    if !std::io::stdout().is_terminal() {
        return Err(CliError::new("not_a_terminal", "hearth top needs a terminal on stdout")
            .hint("`hearth events` and `hearth status` print to pipes and files"));
    }
    // Before the screen changes: with no daemon, say so plainly and stop.
    drop(ctx.connect::<StatusChannel>().await?);
    let (updates, mut rx) = mpsc::channel(BATCH);
    let feed = Feed::start(ctx.connect_options(), updates);
    let mut screen =
        Screen::enter().map_err(|e| CliError::new("io_error", format!("cannot set up the terminal: {e}")))?;
    let ended = run(&mut screen, &feed, &mut rx).await;
    drop(screen);
    ended
}

async fn run(screen: &mut Screen, feed: &Feed, rx: &mut mpsc::Receiver<model::Update>) -> Result<u8, CliError> {
    let mut model = Model::new();
    let mut keys = EventStream::new();
    let mut second = tokio::time::interval(Duration::from_secs(1));
    second.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    second.tick().await;
    let mut signals = Vec::new();
    for kind in [SignalKind::terminate(), SignalKind::hangup(), SignalKind::interrupt()] {
        signals.push((kind.as_raw_value(), signal(kind)?));
    }
    let [(term, sigterm), (hup, sighup), (int, sigint)] = &mut signals[..] else { unreachable!("three signals") };
    let mut dirty = true;
    let mut drawn_at: Option<Instant> = None;
    loop {
        if !Screen::intact() {
            return Err(CliError::new("internal", "hearth top stopped after an internal error (printed above)"));
        }
        let next_frame = drawn_at.map_or_else(Instant::now, |at| at + FRAME);
        if dirty && Instant::now() >= next_frame {
            screen.terminal.draw(|frame| view::draw(frame, &model))?;
            dirty = false;
            drawn_at = Some(Instant::now());
        }
        tokio::select! {
            key = keys.next() => match key {
                Some(Ok(event)) => {
                    dirty = true;
                    if let Some(exit) = on_input(&mut model, feed, &event) {
                        return Ok(exit);
                    }
                }
                Some(Err(e)) => return Err(CliError::new("io_error", format!("cannot read the terminal: {e}"))),
                None => return Ok(EXIT_OK),
            },
            update = rx.recv() => {
                let Some(update) = update else {
                    return Err(CliError::new("internal", "the link to the daemon ended unexpectedly"));
                };
                model.apply(update);
                for _ in 1..BATCH {
                    match rx.try_recv() {
                        Ok(update) => model.apply(update),
                        Err(_) => break,
                    }
                }
                dirty = true;
            }
            _ = second.tick() => {
                model.tick();
                dirty = true;
            }
            () = tokio::time::sleep_until(next_frame), if dirty => {}
            _ = sigterm.recv() => return Ok(signaled(*term)),
            _ = sighup.recv() => return Ok(signaled(*hup)),
            _ = sigint.recv() => return Ok(signaled(*int)),
        }
    }
}

fn signaled(signal: i32) -> u8 {
    u8::try_from(128 + signal).unwrap_or(1)
}

/// Acts on a key; returns the exit status when it quits.
fn on_input(model: &mut Model, feed: &Feed, event: &Event) -> Option<u8> {
    let Event::Key(KeyEvent { code, modifiers, kind: KeyEventKind::Press, .. }) = event else {
        // A resize is drawn anew at the next frame (ratatui resizes its buffers then).
        return None;
    };
    if *code == KeyCode::Char('c') && modifiers.contains(KeyModifiers::CONTROL) {
        return Some(EXIT_OK);
    }
    #[cfg(debug_assertions)]
    if *code == KeyCode::Char('!') && std::env::var_os("HEARTH_TOP_DEBUG_PANIC").is_some() {
        // Debug builds only: the tests show that a panic leaves a usable terminal.
        panic!("a panic on purpose (HEARTH_TOP_DEBUG_PANIC)");
    }
    match (&model.mode, code) {
        (Mode::Confirm(action), KeyCode::Char('y' | 'Y')) => {
            let action = action.clone();
            model.say(format!("{}…", capitalize(&action.describe())), false);
            feed.act(action);
            model.mode = Mode::Normal;
        }
        (Mode::Confirm(action), _) => {
            model.say(format!("did not {}", action.describe()), false);
            model.mode = Mode::Normal;
        }
        (Mode::Help, KeyCode::Char('?') | KeyCode::Esc) => model.mode = Mode::Normal,
        (_, KeyCode::Char('q') | KeyCode::Esc) => return Some(EXIT_OK),
        (_, KeyCode::Char('?')) => model.mode = Mode::Help,
        (_, KeyCode::Up | KeyCode::Char('k')) => model.select_by(-1),
        (_, KeyCode::Down | KeyCode::Char('j')) => model.select_by(1),
        (_, KeyCode::PageUp) => model.select_by(-10),
        (_, KeyCode::PageDown) => model.select_by(10),
        (_, KeyCode::Home | KeyCode::Char('g')) => model.select_edge(false),
        (_, KeyCode::End | KeyCode::Char('G')) => model.select_edge(true),
        (_, KeyCode::Char('c')) => {
            if let Some(action) = model.cancel_selected() {
                model.mode = Mode::Confirm(action);
            }
        }
        (_, KeyCode::Char('r')) => {
            if let Some(action) = model.retry_selected() {
                model.say(format!("{}…", capitalize(&action.describe())), false);
                feed.act(action);
            }
        }
        _ => {}
    }
    None
}

fn capitalize(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map_or_else(String::new, |c| c.to_uppercase().chain(chars).collect())
}
