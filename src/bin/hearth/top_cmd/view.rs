//! Drawing `hearth top`: a header line, the sections, a footer line, and
//! the help over them when asked. Reads the model; changes nothing.
//!
//! The sections are a list: one for processes, when the daemon serves
//! them, is a variant of [`Section`], its height and its draw function.

use std::time::Duration;

use hearth::protocol::pool::PoolsReport;
use hearth::protocol::queue::{Job, JobState};
use hearth::protocol::status::{HealthState, StatusReport};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Clear, Paragraph, Row, Sparkline, Table, TableState};

use super::model::{Link, Mode, Model, Snapshot};
use crate::{output, status_cmd};

/// How long the outcome of an action stays in the footer.
const MESSAGE_FOR: Duration = Duration::from_secs(8);

/// The sections, top to bottom.
const SECTIONS: [Section; 3] = [Section::Daemon, Section::Jobs, Section::PoolsAndThroughput];

#[derive(Debug, Clone, Copy)]
enum Section {
    /// Health, connections, queue counts.
    Daemon,
    /// Jobs not ended, then the latest ended; the selection is here.
    Jobs,
    /// Pools beside the throughput sparklines.
    PoolsAndThroughput,
}

impl Section {
    fn height(self, model: &Model) -> Constraint {
        match self {
            Section::Daemon => {
                let lines = model.snapshot.as_ref().map_or(1, |s| daemon_lines(s).len());
                Constraint::Length(2 + lines as u16)
            }
            Section::Jobs => Constraint::Min(5),
            Section::PoolsAndThroughput => {
                let pools = model.snapshot.as_ref().and_then(|s| s.pools.as_ref()).map_or(1, |p| p.pools.len().max(1));
                Constraint::Length((pools as u16 + 3).clamp(8, 12))
            }
        }
    }

    fn draw(self, frame: &mut Frame<'_>, area: Rect, model: &Model) {
        match self {
            Section::Daemon => draw_daemon(frame, area, model),
            Section::Jobs => draw_jobs(frame, area, model),
            Section::PoolsAndThroughput => {
                let [pools, rates] =
                    Layout::horizontal([Constraint::Percentage(60), Constraint::Percentage(40)]).areas(area);
                draw_pools(frame, pools, model);
                draw_throughput(frame, rates, model);
            }
        }
    }
}

pub(super) fn draw(frame: &mut Frame<'_>, model: &Model) {
    let mut rows = vec![Constraint::Length(1)];
    rows.extend(SECTIONS.iter().map(|s| s.height(model)));
    rows.push(Constraint::Length(1));
    let areas = Layout::vertical(rows).split(frame.area());
    draw_header(frame, areas[0], model);
    for (section, area) in SECTIONS.iter().zip(&areas[1..]) {
        section.draw(frame, *area, model);
    }
    draw_footer(frame, areas[areas.len() - 1], model);
    if model.mode == Mode::Help {
        draw_help(frame);
    }
}

/// Dimmed while the daemon is down: what is shown is its last word.
fn body_style(model: &Model) -> Style {
    if model.is_up() { Style::default() } else { Style::default().add_modifier(Modifier::DIM) }
}

fn clock(ms: u64) -> String {
    let time = hearth::time::rfc3339_ms(ms);
    time.get(11..19).map_or(time.clone(), |t| format!("{t} UTC"))
}

fn ago(now_ms: u64, then_ms: u64) -> String {
    output::duration(Duration::from_millis(now_ms.saturating_sub(then_ms)))
}

fn draw_header(frame: &mut Frame<'_>, area: Rect, model: &Model) {
    let title = Span::styled(" hearth top ", Style::default().add_modifier(Modifier::BOLD | Modifier::REVERSED));
    let line = match (&model.link, &model.snapshot) {
        (Link::Up { daemon }, snapshot) => {
            let mut spans = vec![title, Span::raw(format!(" hearthd {} (pid {})", daemon.version, daemon.pid))];
            if let Some(s) = snapshot.as_ref().filter(|s| s.status.pid == daemon.pid) {
                spans.push(Span::raw(format!(
                    " · up {} · ",
                    output::duration(Duration::from_millis(s.status.uptime_ms))
                )));
                spans.push(health(s.status.health.state));
            }
            Line::from(spans)
        }
        (Link::Down { why, at_ms }, _) => Line::from(vec![
            title,
            Span::styled(
                format!(" NO DAEMON: {why} (since {}); waiting for one to start, q quits ", clock(*at_ms)),
                Style::default().fg(Color::White).bg(Color::Red).add_modifier(Modifier::BOLD),
            ),
        ]),
    };
    frame.render_widget(Paragraph::new(line), area);
}

fn health(state: HealthState) -> Span<'static> {
    let color = match state {
        HealthState::Healthy => Color::Green,
        HealthState::Degraded => Color::Yellow,
        HealthState::Unhealthy => Color::Red,
    };
    Span::styled(format!("● {}", state.as_str()), Style::default().fg(color).add_modifier(Modifier::BOLD))
}

fn draw_daemon(frame: &mut Frame<'_>, area: Rect, model: &Model) {
    let block = Block::bordered().title(" Daemon ");
    let lines = match &model.snapshot {
        Some(snapshot) => daemon_lines(snapshot),
        None => vec![Line::raw("waiting for the daemon's first answer…")],
    };
    frame.render_widget(Paragraph::new(lines).style(body_style(model)).block(block), area);
}

/// Health, connections, the queue, then the line `hearth status` shows for
/// each other service that runs (pools have their own section), then the
/// health reasons (three at most).
fn daemon_lines(snapshot: &Snapshot) -> Vec<Line<'static>> {
    let s: &StatusReport = &snapshot.status;
    let c = s.connections;
    let mut lines = vec![
        Line::from(vec![Span::raw("health       "), health(s.health.state)]),
        Line::from(format!(
            "connections  {} open of {} · {} since start · refused {} busy, {} other user",
            c.active, s.limits.max_connections, c.total, c.refused_busy, c.refused_peer
        )),
    ];
    if let Some(q) = &snapshot.queue {
        lines.push(Line::from(format!(
            "queue        {} running · {} queued · {} retrying · {} dead · {} of {} workers busy · {} ended in 1 min",
            q.states.running,
            q.states.queued,
            q.states.retry_wait,
            q.states.dead,
            q.busy_workers,
            q.workers,
            q.finished_last_minute
        )));
    }
    for (name, summary) in status_cmd::service_rows(s) {
        // Shown in more detail elsewhere on the screen.
        let detailed = match name {
            "queue" => snapshot.queue.is_some(),
            "pools" => snapshot.pools.is_some(),
            _ => false,
        };
        if !detailed {
            lines.push(Line::from(format!("{name:<12} {summary}")));
        }
    }
    for reason in s.health.reasons.iter().take(3) {
        lines.push(Line::styled(
            format!("  {} [{}]: {}", reason.code, reason.severity.as_str(), reason.message),
            Style::default().fg(Color::Yellow),
        ));
    }
    lines
}

fn state_style(state: JobState) -> Style {
    match state {
        JobState::Running => Style::default().fg(Color::Green),
        JobState::RetryWait => Style::default().fg(Color::Yellow),
        JobState::Dead => Style::default().fg(Color::Red),
        JobState::Canceled => Style::default().fg(Color::DarkGray),
        JobState::Queued | JobState::Succeeded => Style::default(),
    }
}

/// How long the job has been in its state.
fn in_state(job: &Job, now_ms: u64) -> String {
    let since = match job.state {
        JobState::Running => job.started_at_ms.unwrap_or(job.created_at_ms),
        JobState::Queued | JobState::RetryWait => job.created_at_ms,
        JobState::Succeeded | JobState::Dead | JobState::Canceled => job.finished_at_ms.unwrap_or(job.created_at_ms),
    };
    ago(now_ms, since)
}

fn draw_jobs(frame: &mut Frame<'_>, area: Rect, model: &Model) {
    let jobs = model.jobs();
    let active = jobs.iter().filter(|j| !j.state.is_final()).count();
    let title = format!(" Jobs: {active} not ended, the latest {} ended ", jobs.len() - active);
    let block = Block::bordered().title(title);
    if model.snapshot.as_ref().is_some_and(|s| s.queue.is_none()) {
        frame.render_widget(Paragraph::new("this daemon does not serve the queue").block(block), area);
        return;
    }
    if jobs.is_empty() {
        frame.render_widget(Paragraph::new("no jobs (`hearth queue submit -- CMD` adds one)").block(block), area);
        return;
    }
    let now = hearth::time::now_ms();
    let rows = jobs.iter().map(|j| {
        Row::new(vec![
            Cell::from(j.id.to_string()),
            Cell::from(j.state.to_string()).style(state_style(j.state)),
            Cell::from(j.queue.clone()),
            Cell::from(format!("{}/{}", j.attempts, j.max_attempts)),
            Cell::from(in_state(j, now)),
            Cell::from(j.argv.join(" ")),
        ])
    });
    let widths = [
        Constraint::Length(7),
        Constraint::Length(10),
        Constraint::Length(10),
        Constraint::Length(5),
        Constraint::Length(9),
        Constraint::Fill(1),
    ];
    let header = Row::new(["ID", "STATE", "QUEUE", "TRIES", "IN STATE", "COMMAND"])
        .style(Style::default().add_modifier(Modifier::BOLD));
    let table = Table::new(rows, widths)
        .header(header)
        .block(block)
        .style(body_style(model))
        .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED))
        .highlight_symbol("▶ ");
    let mut state = TableState::default().with_selected(model.selected_index());
    frame.render_stateful_widget(table, area, &mut state);
}

fn draw_pools(frame: &mut Frame<'_>, area: Rect, model: &Model) {
    let block = Block::bordered().title(" Pools ");
    let report: Option<&PoolsReport> = model.snapshot.as_ref().and_then(|s| s.pools.as_ref());
    let Some(report) = report else {
        let text = if model.snapshot.is_some() { "this daemon does not serve pools" } else { "" };
        frame.render_widget(Paragraph::new(text).block(block), area);
        return;
    };
    if report.pools.is_empty() {
        frame.render_widget(Paragraph::new("no pools (`hearth pool define` adds one)").block(block), area);
        return;
    }
    let rows = report.pools.iter().map(|p| {
        let failing = if p.failures > 0 { Style::default().fg(Color::Red) } else { Style::default() };
        Row::new(vec![
            Cell::from(p.name.clone()),
            Cell::from(format!("{}/{}", p.ready, p.target)),
            Cell::from(p.building.to_string()),
            Cell::from(p.taken.to_string()),
            Cell::from(p.warm_hit_rate.map_or("-".into(), |r| format!("{:.0}%", r * 100.0))),
            Cell::from(p.failures.to_string()).style(failing),
        ])
    });
    let widths = [
        Constraint::Fill(1),
        Constraint::Length(7),
        Constraint::Length(8),
        Constraint::Length(5),
        Constraint::Length(9),
        Constraint::Length(8),
    ];
    let header = Row::new(["POOL", "READY", "BUILDING", "TAKEN", "WARM HITS", "FAILING"])
        .style(Style::default().add_modifier(Modifier::BOLD));
    let title = format!(" Pools: {} of {} builds running ", report.builds_running, report.max_concurrent_builds);
    let table = Table::new(rows, widths).header(header).block(Block::bordered().title(title)).style(body_style(model));
    frame.render_widget(table, area);
}

fn draw_throughput(frame: &mut Frame<'_>, area: Rect, model: &Model) {
    let block = Block::bordered().title(" Throughput, per second ");
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let [jobs_label, jobs, events_label, events] =
        Layout::vertical([Constraint::Length(1), Constraint::Fill(1), Constraint::Length(1), Constraint::Fill(1)])
            .areas(inner);
    let width = usize::from(inner.width);
    let missed = if model.missed > 0 { format!(" · {} missed", model.missed) } else { String::new() };
    for (rate, label, label_area, spark_area, color) in [
        (&model.jobs_ended, "jobs ended", jobs_label, jobs, Color::Green),
        (&model.events, "events", events_label, events, Color::Cyan),
    ] {
        let extra = if label == "events" { missed.as_str() } else { "" };
        let text = format!("{label}: {} now, peak {}{extra}", rate.last(), rate.peak(width));
        frame.render_widget(Paragraph::new(text), label_area);
        // The newest second at the right edge.
        let shown: Vec<u64> = rate.samples.iter().rev().take(width).rev().copied().collect();
        frame.render_widget(Sparkline::default().data(&shown).style(Style::default().fg(color)), spark_area);
    }
}

fn draw_footer(frame: &mut Frame<'_>, area: Rect, model: &Model) {
    let line = match &model.mode {
        Mode::Confirm(action) => {
            let what = model.selected_job().map_or_else(String::new, |j| format!(" ({})", j.argv.join(" ")));
            Line::styled(
                format!(" {}{what}? y: yes, any other key: no ", capitalized(&action.describe())),
                Style::default().fg(Color::Black).bg(Color::Yellow).add_modifier(Modifier::BOLD),
            )
        }
        _ => match model.message.as_ref().filter(|m| m.at.elapsed() < MESSAGE_FOR) {
            Some(m) => Line::styled(
                format!(" {}", m.text),
                if m.failed { Style::default().fg(Color::Red) } else { Style::default().fg(Color::Green) },
            ),
            None => Line::styled(
                " ↑↓ select  c cancel job  r retry dead job  ? help  q quit",
                Style::default().add_modifier(Modifier::DIM),
            ),
        },
    };
    frame.render_widget(Paragraph::new(line), area);
}

fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map_or_else(String::new, |c| c.to_uppercase().chain(chars).collect())
}

const HELP: &[(&str, &str)] = &[
    ("↑ ↓  k j", "select a job"),
    ("PgUp PgDn", "move ten rows"),
    ("Home End  g G", "first, last job"),
    ("c", "cancel the selected job (asks first)"),
    ("r", "retry the selected job, if dead"),
    ("?", "show or hide this help"),
    ("q  Esc  Ctrl-C", "quit (Esc first closes this help)"),
];

fn draw_help(frame: &mut Frame<'_>) {
    let area = frame.area().centered(Constraint::Length(64), Constraint::Length(HELP.len() as u16 + 6));
    let mut lines: Vec<Line<'_>> = HELP
        .iter()
        .map(|(keys, what)| {
            Line::from(vec![
                Span::styled(format!(" {keys:<16}"), Style::default().add_modifier(Modifier::BOLD)),
                Span::raw(*what),
            ])
        })
        .collect();
    lines.push(Line::raw(""));
    lines.push(Line::raw(" The screen follows the daemon's events and refreshes each"));
    lines.push(Line::raw(" second; if the daemon stops, it waits for the next one."));
    frame.render_widget(Clear, area);
    frame.render_widget(Paragraph::new(lines).block(Block::bordered().title(" Help ")), area);
}

#[cfg(test)]
mod tests {
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    use super::super::model::tests::{job, model_with};
    use super::super::model::{Action, Update};
    use super::*;

    fn screen(model: &Model, width: u16, height: u16) -> String {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).expect("a test terminal");
        terminal.draw(|frame| draw(frame, model)).expect("draw");
        let buffer = terminal.backend().buffer().clone();
        let mut text = String::new();
        for y in 0..buffer.area.height {
            for x in 0..buffer.area.width {
                text.push_str(buffer[(x, y)].symbol());
            }
            text.push('\n');
        }
        text
    }

    #[test]
    fn the_dashboard_shows_the_daemon_its_jobs_and_the_selection() {
        let model = model_with(vec![job(3, JobState::Running), job(4, JobState::Dead)]);
        let text = screen(&model, 120, 30);
        assert!(text.contains("hearthd 0.1.0 (pid 42) · up 1m 1s · ● healthy"), "{text}");
        assert!(text.contains("3 open of 256 · 9 since start"), "{text}");
        assert!(text.contains("1 running · 1 queued · 0 retrying · 1 dead · 1 of 4 workers busy"), "{text}");
        assert!(text.contains("no pools"), "{text}");
        assert!(text.contains("▶ 3"), "the first job is selected: {text}");
        assert!(text.contains("dead"), "{text}");
        assert!(text.contains("sleep 30"), "{text}");
    }

    #[test]
    fn a_stopped_daemon_is_said_in_the_header_and_confirmations_in_the_footer() {
        let mut model = model_with(vec![job(3, JobState::Running)]);
        model.apply(Update::Down("the daemon stopped".into()));
        model.mode = Mode::Confirm(Action::CancelJob(3));
        let text = screen(&model, 120, 30);
        assert!(text.contains("NO DAEMON: the daemon stopped"), "{text}");
        assert!(text.contains("Cancel job 3 (sleep 30)? y: yes"), "{text}");
    }

    #[test]
    fn small_terminals_and_the_help_draw_without_panicking() {
        let mut model = model_with(vec![job(3, JobState::Running)]);
        for (w, h) in [(1, 1), (20, 5), (40, 12), (300, 80)] {
            screen(&model, w, h);
        }
        model.mode = Mode::Help;
        let text = screen(&model, 100, 30);
        assert!(text.contains("cancel the selected job"), "{text}");
    }
}
