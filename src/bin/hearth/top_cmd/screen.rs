//! The terminal while `hearth top` runs: raw mode, the alternate screen, a
//! hidden cursor, and their undoing on every way out: a return, an error,
//! an unwind (dropping [`Screen`]), and a panic (a hook that restores the
//! terminal before the panic's message is printed, so that it is seen and
//! the shell is usable).

use std::io::{Stdout, stdout};
use std::sync::Once;
use std::sync::atomic::{AtomicBool, Ordering};

use crossterm::cursor::{Hide, Show};
use crossterm::execute;
use crossterm::terminal::{EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode};
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;

/// Whether the terminal is in the dashboard's mode now.
static ENTERED: AtomicBool = AtomicBool::new(false);

/// The dashboard's terminal; dropping it restores the terminal.
#[derive(Debug)]
pub(super) struct Screen {
    pub(super) terminal: Terminal<CrosstermBackend<Stdout>>,
}

impl Screen {
    pub(super) fn enter() -> std::io::Result<Self> {
        static HOOK: Once = Once::new();
        HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                restore();
                previous(info);
            }));
        });
        enable_raw_mode()?;
        ENTERED.store(true, Ordering::SeqCst);
        // From here on a failure is undone by the caller's drop of nothing:
        // restore by hand before returning it.
        let entered = execute!(stdout(), EnterAlternateScreen, Hide)
            .and_then(|()| Terminal::new(CrosstermBackend::new(stdout())));
        match entered {
            Ok(terminal) => Ok(Self { terminal }),
            Err(e) => {
                restore();
                Err(e)
            }
        }
    }

    /// False once a panic (in any task) restored the terminal: the
    /// dashboard cannot go on drawing.
    pub(super) fn intact() -> bool {
        ENTERED.load(Ordering::SeqCst)
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        restore();
    }
}

/// Undoes [`Screen::enter`], once.
fn restore() {
    if ENTERED.swap(false, Ordering::SeqCst) {
        // Raw mode first: it is what makes a broken terminal unusable.
        let _ = disable_raw_mode();
        let _ = execute!(stdout(), LeaveAlternateScreen, Show);
    }
}
