//! `hearth completions SHELL`: tab completion for bash, zsh, fish, elvish
//! and PowerShell, generated from the same definitions as `--help`.
//!
//! The man pages in `contrib/man/` are generated from those definitions
//! too; a test keeps them in step (`HEARTH_UPDATE_MAN=1 cargo test --bin
//! hearth man_pages` rewrites them).

use clap::CommandFactory;

use crate::error::{CliError, EXIT_OK};

#[derive(Debug, clap::Args)]
pub(crate) struct CompletionsArgs {
    /// The shell
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

/// Prints the completion script for a shell on stdout.
pub(crate) fn completions(args: &CompletionsArgs) -> Result<u8, CliError> {
    let mut command = crate::Cli::command();
    clap_complete::generate(args.shell, &mut command, "hearth", &mut crate::output::Stdout);
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use clap::CommandFactory;

    /// Every page: `hearth.1`, then `hearth-<group>.1` and
    /// `hearth-<group>-<command>.1` for each subcommand.
    fn pages() -> Vec<(String, Vec<u8>)> {
        fn walk(command: &clap::Command, name: &str, out: &mut Vec<(String, Vec<u8>)>) {
            // clap keeps names as `&'static str`; a test may leak a few.
            let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
            let command = command.clone().name(leaked).display_name(leaked);
            let mut page = Vec::new();
            clap_mangen::Man::new(command.clone()).render(&mut page).expect("render");
            out.push((format!("{name}.1"), page));
            for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
                walk(sub, &format!("{name}-{}", sub.get_name()), out);
            }
        }
        let mut out = Vec::new();
        let mut root = crate::Cli::command();
        root.build();
        walk(&root, "hearth", &mut out);
        out
    }

    #[test]
    fn man_pages_match_the_commands() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/man");
        let update = std::env::var_os("HEARTH_UPDATE_MAN").is_some();
        if update {
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
        }
        let pages = pages();
        for (name, page) in &pages {
            let path = dir.join(name);
            if update {
                std::fs::write(&path, page).unwrap();
            }
            let on_disk = std::fs::read(&path).unwrap_or_default();
            assert!(
                on_disk == *page,
                "contrib/man/{name} is out of date: run HEARTH_UPDATE_MAN=1 cargo test --bin hearth man_pages"
            );
        }
        let listed = std::fs::read_dir(&dir).unwrap().count();
        assert_eq!(listed, pages.len(), "contrib/man holds pages of commands that no longer exist");
    }

    #[test]
    fn completions_know_every_command() {
        let mut script = Vec::new();
        clap_complete::generate(clap_complete::Shell::Bash, &mut crate::Cli::command(), "hearth", &mut script);
        let script = String::from_utf8(script).unwrap();
        for command in ["events", "queue", "pool", "blob", "daemon", "completions"] {
            assert!(script.contains(command), "bash completion lacks {command}");
        }
    }
}
