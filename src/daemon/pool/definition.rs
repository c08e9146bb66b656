//! Pool definitions: validation, defaults, the built-in `venv` pool, and the
//! commands a definition runs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::protocol::pool::{PoolCommands, PoolDefinition, PoolKind};

/// Pools defined at once (config, run time and built in together).
pub(crate) const MAX_POOLS: usize = 64;
/// The largest target size.
pub(crate) const MAX_SIZE: u32 = 64;
/// Default: a build taking longer is killed.
pub(crate) const DEFAULT_CREATE_TIMEOUT: Duration = Duration::from_secs(600);
/// Default: how often ready resources are checked.
pub(crate) const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(900);
/// Default: how long a take waits for an on-demand build.
pub(crate) const DEFAULT_TAKE_TIMEOUT: Duration = Duration::from_secs(600);
/// The built-in pool.
pub(crate) const BUILTIN_VENV: &str = "venv";
/// The placeholder for the resource's directory.
pub(crate) const PATH_PLACEHOLDER: &str = "{path}";

const MAX_NAME: usize = 64;
const MAX_ARGS: usize = 256;
const MAX_ARG_BYTES: usize = 8192;
const MAX_PACKAGES: usize = 256;
const MAX_ENV: usize = 64;

/// Whether `name` is a valid pool name: 1 to 64 ASCII letters, digits, `_`
/// or `-`, starting with a letter or digit (so it is always a plain,
/// non-hidden directory name).
pub(crate) fn validate_name(name: &str) -> Result<(), String> {
    crate::daemon::fsutil::validate_dir_name("pool name", name, MAX_NAME)
}

/// The built-in `venv` pool: an environment with no packages, none kept ready.
pub(crate) fn builtin_venv() -> PoolDefinition {
    normalize(PoolDefinition { name: BUILTIN_VENV.into(), kind: Some(PoolKind::Venv), ..Default::default() })
        .expect("the built-in definition is valid")
}

/// Validates `def` and fills in its defaults (kind, timeouts).
pub(crate) fn normalize(mut def: PoolDefinition) -> Result<PoolDefinition, String> {
    validate_name(&def.name)?;
    let kind = *def.kind.get_or_insert(if def.create.is_none() { PoolKind::Venv } else { PoolKind::Command });
    match (kind, &def.create) {
        (PoolKind::Command, None) => {
            return Err("create is required for a pool of kind command (an argument vector)".into());
        }
        (PoolKind::Command, Some(create)) => {
            argv("create", create)?;
            if !def.packages.is_empty() || def.python.is_some() {
                return Err("packages and python are for pools of kind venv".into());
            }
        }
        (PoolKind::Venv, None) => {}
        (PoolKind::Venv, Some(_)) => {
            return Err("a venv pool builds its own environments: drop create, or use kind command".into());
        }
    }
    if let Some(check) = &def.check {
        argv("check", check)?;
    }
    if let Some(reset) = &def.reset {
        argv("reset", reset)?;
    }
    if def.packages.len() > MAX_PACKAGES {
        return Err(format!("at most {MAX_PACKAGES} packages"));
    }
    for p in &def.packages {
        if p.is_empty() || p.starts_with('-') || p.len() > MAX_ARG_BYTES || p.contains('\0') {
            return Err(format!("invalid package {p:?}: a requirement such as \"numpy>=2\", not an option"));
        }
    }
    if let Some(python) = &def.python
        && (python.is_empty() || python.contains('\0') || python.starts_with('-'))
    {
        return Err(format!("invalid python {python:?}"));
    }
    if def.size > MAX_SIZE {
        return Err(format!("size must be at most {MAX_SIZE}, not {}", def.size));
    }
    for (key, value) in [
        ("max_age", def.max_age_ms),
        ("create_timeout", def.create_timeout_ms),
        ("check_interval", def.check_interval_ms),
    ] {
        if value == Some(0) {
            return Err(format!("{key} must be longer than 0"));
        }
    }
    def.create_timeout_ms.get_or_insert(DEFAULT_CREATE_TIMEOUT.as_millis() as u64);
    if check_command(&def).is_some() {
        def.check_interval_ms.get_or_insert(DEFAULT_CHECK_INTERVAL.as_millis() as u64);
    } else if def.check_interval_ms.is_some() {
        return Err("check_interval needs a check command".into());
    }
    if def.env.len() > MAX_ENV {
        return Err(format!("at most {MAX_ENV} environment variables"));
    }
    for (k, v) in &def.env {
        if k.is_empty() || k.contains(['=', '\0']) || v.contains('\0') || k.len() + v.len() > MAX_ARG_BYTES {
            return Err(format!("invalid environment variable {k:?}"));
        }
    }
    Ok(def)
}

/// An argument vector: a program, then at most `MAX_ARGS - 1` arguments.
fn argv(field: &str, args: &[String]) -> Result<(), String> {
    if args.first().is_none_or(String::is_empty) {
        return Err(format!("{field} must name a program: an argument vector such as [\"sh\", \"-c\", \"…\"]"));
    }
    if args.len() > MAX_ARGS || args.iter().any(|a| a.len() > MAX_ARG_BYTES || a.contains('\0')) {
        return Err(format!("{field}: at most {MAX_ARGS} arguments of at most {MAX_ARG_BYTES} bytes, without NUL"));
    }
    Ok(())
}

/// The check a definition runs: its own, or the `venv` kind's (the
/// environment's interpreter starts).
pub(crate) fn check_command(def: &PoolDefinition) -> Option<Vec<String>> {
    match (&def.check, def.kind) {
        (Some(check), _) => Some(check.clone()),
        (None, Some(PoolKind::Venv)) => Some(vec!["{path}/bin/python".into(), "-c".into(), String::new()]),
        (None, _) => None,
    }
}

/// The commands a definition runs, `{path}` still in place. `uv` is the
/// `uv` binary found on `PATH`, if any.
pub(crate) fn commands(def: &PoolDefinition, uv: Option<&Path>) -> PoolCommands {
    let create = match def.kind {
        Some(PoolKind::Venv) => venv_steps(def, uv),
        _ => def.create.iter().cloned().collect(),
    };
    PoolCommands { create, check: check_command(def), reset: def.reset.clone() }
}

fn venv_steps(def: &PoolDefinition, uv: Option<&Path>) -> Vec<Vec<String>> {
    let s = |x: &str| x.to_owned();
    let mut steps = Vec::new();
    match uv {
        Some(uv) => {
            let uv = uv.display().to_string();
            let mut venv = vec![uv.clone(), s("venv"), s("--quiet")];
            if let Some(python) = &def.python {
                venv.extend([s("--python"), python.clone()]);
            }
            venv.push(s(PATH_PLACEHOLDER));
            steps.push(venv);
            if !def.packages.is_empty() {
                let mut install = vec![uv, s("pip"), s("install"), s("--python"), s(PATH_PLACEHOLDER)];
                install.extend(def.packages.iter().cloned());
                steps.push(install);
            }
        }
        None => {
            let python = def.python.clone().unwrap_or_else(|| s("python3"));
            steps.push(vec![python, s("-m"), s("venv"), s(PATH_PLACEHOLDER)]);
            if !def.packages.is_empty() {
                let mut install = vec![
                    s("{path}/bin/python"),
                    s("-m"),
                    s("pip"),
                    s("install"),
                    s("--disable-pip-version-check"),
                    s("--no-input"),
                ];
                install.extend(def.packages.iter().cloned());
                steps.push(install);
            }
        }
    }
    steps
}

/// `uv` on `PATH`, if any.
pub(crate) fn find_uv() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join("uv")).find(|candidate| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(candidate).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// `args` with every `{path}` replaced by `dir`.
pub(crate) fn substitute(args: &[String], dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy();
    args.iter().map(|a| a.replace(PATH_PLACEHOLDER, &dir)).collect()
}

/// What a resource was built from: resources built from another
/// definition are rebuilt. Only what changes the built resource counts (not
/// `size`, `max_age` or timeouts). FNV-1a over the canonical JSON.
pub(crate) fn fingerprint(def: &PoolDefinition) -> String {
    let build = serde_json::json!({
        "kind": def.kind.map(PoolKind::as_str),
        // Absent and the empty list hash alike, as they did when an
        // absent `create` was stored as an empty list.
        "create": def.create.as_deref().unwrap_or_default(),
        "packages": def.packages,
        "python": def.python,
        "env": def.env,
    });
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in build.to_string().bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(name: &str, create: &[&str]) -> PoolDefinition {
        PoolDefinition {
            name: name.into(),
            create: Some(create.iter().map(|s| (*s).to_owned()).collect()),
            ..Default::default()
        }
    }

    #[test]
    fn names() {
        for ok in ["venv", "a", "my-app_2", "X1"] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".trash", "-x", "_x", "a/b", "..", "a b", "é", &"x".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn kinds_are_inferred_and_checked() {
        let def = normalize(command("a", &["sh", "-c", "mkdir -p {path}"])).unwrap();
        assert_eq!(def.kind, Some(PoolKind::Command));
        assert_eq!(def.create_timeout_ms, Some(600_000));
        assert_eq!(def.check_interval_ms, None);
        let venv = normalize(PoolDefinition { name: "v".into(), ..Default::default() }).unwrap();
        assert_eq!(venv.kind, Some(PoolKind::Venv));
        assert_eq!(venv.check_interval_ms, Some(900_000), "venvs have a built-in check");

        let mut bad = command("a", &[]);
        bad.create = None;
        bad.kind = Some(PoolKind::Command);
        assert!(normalize(bad).unwrap_err().contains("create is required"));
        // An empty create is a mistake, never a venv pool in disguise.
        for kind in [None, Some(PoolKind::Command), Some(PoolKind::Venv)] {
            let mut bad = command("a", &[]);
            bad.kind = kind;
            assert!(normalize(bad).unwrap_err().contains("create"), "{kind:?}");
        }
        let mut bad = command("a", &[""]);
        assert!(normalize(bad.clone()).unwrap_err().contains("must name a program"));
        bad.create = Some(vec!["true".into()]);
        bad.check = Some(vec![]);
        assert!(normalize(bad).unwrap_err().contains("check must name a program"));
        let mut bad = command("a", &["true"]);
        bad.kind = Some(PoolKind::Venv);
        assert!(normalize(bad).is_err());
        let mut bad = command("a", &["true"]);
        bad.packages = vec!["six".into()];
        assert!(normalize(bad).is_err());
        let mut bad = builtin_venv();
        bad.packages = vec!["--index-url=http://x".into()];
        assert!(normalize(bad).unwrap_err().contains("package"));
        let mut bad = command("a", &["true"]);
        bad.size = MAX_SIZE + 1;
        assert!(normalize(bad).is_err());
        let mut bad = command("a", &["true"]);
        bad.max_age_ms = Some(0);
        assert!(normalize(bad).is_err());
        let mut bad = command("a", &["true"]);
        bad.check_interval_ms = Some(5);
        assert!(normalize(bad).unwrap_err().contains("check"));
        let mut bad = command("a", &["true"]);
        bad.env.insert("A=B".into(), "x".into());
        assert!(normalize(bad).is_err());
    }

    #[test]
    fn venv_commands_follow_the_tools() {
        let mut def = builtin_venv();
        def.packages = vec!["six".into()];
        let plain = commands(&def, None);
        assert_eq!(plain.create[0], ["python3", "-m", "venv", "{path}"]);
        assert_eq!(plain.create[1][..4], ["{path}/bin/python", "-m", "pip", "install"]);
        assert_eq!(plain.create[1].last().unwrap(), "six");
        assert_eq!(plain.check.unwrap()[0], "{path}/bin/python");
        let uv = commands(&def, Some(Path::new("/usr/bin/uv")));
        assert_eq!(uv.create[0], ["/usr/bin/uv", "venv", "--quiet", "{path}"]);
        assert_eq!(uv.create[1], ["/usr/bin/uv", "pip", "install", "--python", "{path}", "six"]);
    }

    #[test]
    fn substitution_and_fingerprints() {
        let args = vec!["sh".into(), "-c".into(), "mkdir -p {path}/a && touch {path}/b".into()];
        assert_eq!(substitute(&args, Path::new("/p/x"))[2], "mkdir -p /p/x/a && touch /p/x/b");
        let a = normalize(command("a", &["true"])).unwrap();
        let mut b = a.clone();
        b.size = 9;
        b.max_age_ms = Some(5);
        assert_eq!(fingerprint(&a), fingerprint(&b), "size and ages do not change what is built");
        b.create.as_mut().unwrap().push("x".into());
        assert_ne!(fingerprint(&a), fingerprint(&b));
    }
}
