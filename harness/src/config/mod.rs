//! Experiment configs (`configs/*.toml`): one schema, documented in
//! `configs/README.md`. Any scalar may be a list; a config is the cartesian
//! product of its lists, times `repeats`. Unknown keys, wrong types and
//! out-of-range values are errors naming the key and the file line.
//!
//! - [`schema`]: the keys of one run (the VMM's section types embedded).
//! - [`matrix`]: axes, counting points, one point's text.
//! - [`locate`]: key -> line, and the located [`ConfigError`].
//! - [`applies`]: keys only some runs read, refused when none does.
//! - this module: the experiment: parse, command-line overrides (applied
//!   before the matrix is expanded), validation of every run, repeats.

pub mod applies;
pub mod expect;
pub mod locate;
pub mod matrix;
pub mod schema;

pub use expect::{ExpectRule, Expected};
pub use locate::ConfigError;
pub use pvlock_abi::seed::repeat_seed as derive_seed;
pub use schema::{workload_names, RunConfig, MAX_REPEATS, MAX_SEED};

use anyhow::{Context, Result};
use locate::Locator;
use matrix::{Axis, MAX_POINTS};
use pvlock_abi::Variant;
use std::path::Path;
use toml_edit::ImDocument;

/// Most runs (points x repeats) one config may have.
pub const MAX_RUNS: usize = 100_000;

/// Command-line values that replace config keys (`pvlock run --vcpus ...`).
/// They are applied to the config before its matrix is expanded: an
/// overridden key is no axis, and `--seed` is the base of every repeat's
/// derived seed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Overrides {
    pub vcpus: Option<u32>,
    pub host_cpus: Option<u32>,
    pub seed: Option<u64>,
    pub duration_ms: Option<u64>,
    pub variant: Option<Variant>,
    pub locks: Option<u32>,
    /// `--kernel-tree`.
    pub kernel_tree: Option<std::path::PathBuf>,
    /// `--kernel-patch` (repeatable), in order.
    pub kernel_patches: Option<Vec<std::path::PathBuf>>,
}

impl Overrides {
    /// (config key, flag, value) of every override given.
    pub fn given(&self) -> Vec<(&'static str, &'static str, String)> {
        let mut v = Vec::new();
        let mut put = |key, flag, val: Option<String>| {
            if let Some(val) = val {
                v.push((key, flag, val));
            }
        };
        put("vcpus", "--vcpus", self.vcpus.map(|x| x.to_string()));
        put("host_cpus", "--host-cpus", self.host_cpus.map(|x| x.to_string()));
        put("seed", "--seed", self.seed.map(|x| x.to_string()));
        put("duration_ms", "--duration-ms", self.duration_ms.map(|x| x.to_string()));
        put("lock.variant", "--variant", self.variant.map(|x| x.name().to_string()));
        put("torture.locks", "--locks", self.locks.map(|x| x.to_string()));
        put("lock.kernel_tree", "--kernel-tree", self.kernel_tree.as_ref().map(|p| p.display().to_string()));
        put(
            "lock.kernel_patches",
            "--kernel-patch",
            self.kernel_patches
                .as_ref()
                .map(|ps| ps.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" ")),
        );
        v
    }

    fn apply(&self, rc: &mut RunConfig) {
        rc.vcpus = self.vcpus.unwrap_or(rc.vcpus);
        rc.host_cpus = self.host_cpus.unwrap_or(rc.host_cpus);
        rc.seed = self.seed.unwrap_or(rc.seed);
        rc.duration_ms = self.duration_ms.unwrap_or(rc.duration_ms);
        rc.lock.variant = self.variant.unwrap_or(rc.lock.variant);
        rc.torture.locks = self.locks.unwrap_or(rc.torture.locks);
        if let Some(t) = &self.kernel_tree {
            rc.lock.kernel_tree = Some(t.clone());
        }
        if let Some(p) = &self.kernel_patches {
            rc.lock.kernel_patches = p.clone();
        }
    }

    /// The flag that set `key`, if one did.
    fn flag_of(&self, key: &str) -> Option<(&'static str, String)> {
        self.given().into_iter().find(|(k, _, _)| *k == key).map(|(_, f, v)| (f, v))
    }
}

/// A parsed experiment: the matrix of runs it expands to.
#[derive(Debug, Clone)]
pub struct Experiment {
    pub name: String,
    pub source: String,
    /// Every run, repeats included, in a stable order.
    pub runs: Vec<RunConfig>,
    /// The keys that vary across the matrix (dotted paths), for run keys.
    pub varying: Vec<String>,
    /// What the command-line overrides replaced (to print before running).
    pub notes: Vec<String>,
    locator: Locator,
    overrides: Overrides,
}

impl Experiment {
    pub fn load(path: &Path) -> Result<Self> {
        Self::load_with(path, &Overrides::default())
    }

    pub fn load_with(path: &Path, overrides: &Overrides) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config {}", path.display()))?;
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        Self::parse_with(&text, &path.display().to_string(), &name, overrides)
    }

    pub fn parse(text: &str, file: &str, default_name: &str) -> Result<Self> {
        Self::parse_with(text, file, default_name, &Overrides::default())
    }

    pub fn parse_with(text: &str, file: &str, default_name: &str, overrides: &Overrides) -> Result<Self> {
        let doc = ImDocument::parse(text).map_err(|e| {
            let line = e.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            let key = line.and_then(|l| key_on_text_line(text, l)).unwrap_or_else(|| "(syntax)".into());
            ConfigError { file: file.into(), line, key, why: e.message().trim().to_string() }
        })?;
        let loc = Locator::new(file, text, &doc);
        let mut axes = matrix::axes(doc.as_table(), &loc)?;
        let mut notes = Vec::new();
        for (key, flag, val) in overrides.given() {
            if let Some(a) = axes.iter_mut().find(|a| a.key == key) {
                notes.push(format!(
                    "{flag} {val} replaces the matrix axis `{key}` of {} values ({})",
                    a.values.len(),
                    a.values.join(", ")
                ));
                // One value left: no axis (and no copies of each run). The
                // value itself is set on each run below.
                a.values.truncate(1);
            }
        }
        let (points, factors) = matrix::count(&axes);
        if points > MAX_POINTS {
            return Err(ConfigError {
                file: file.into(),
                line: None,
                key: "(matrix)".into(),
                why: format!("{points} matrix points ({factors}) are more than {MAX_POINTS}: split the experiment"),
            }
            .into());
        }
        let progress = points >= 1000;
        let varying = axes.iter().filter(|a| a.values.len() > 1).map(|a| a.key.clone()).collect();
        let mut runs = Vec::new();
        for (n, idx) in matrix::points(&axes).enumerate() {
            if progress && n % 1000 == 0 {
                eprintln!("pvlock: {file}: checking matrix point {n} of {points}");
            }
            let text = matrix::point_text(text, &axes, &idx);
            let mut rc: RunConfig = toml::from_str(&text).map_err(|e| type_error(&loc, &text, &e, &axes, &idx))?;
            // A name given names the result directory: one path component
            // (checked here, with its line, not only when `compare` makes
            // the directory).
            if let Some(why) = (!rc.name.is_empty()).then(|| crate::output::path_component_problem(&rc.name)).flatten()
            {
                return Err(loc.error("name", format!("{:?} cannot name a result directory: {why}", rc.name)).into());
            }
            if rc.name.is_empty() {
                rc.name = default_name.to_string();
            }
            overrides.apply(&mut rc);
            rc.validate().map_err(|e| match overrides.flag_of(&e.key) {
                Some((flag, val)) => ConfigError {
                    file: "command line".into(),
                    line: None,
                    key: flag.to_string(),
                    why: format!("{val}: {}", e.why),
                },
                None => {
                    let mut err = loc.error(e.key.clone(), e.why);
                    if axes.iter().any(|a| e.key.starts_with(&a.key)) {
                        err.why += &format!(" (matrix point {})", matrix::describe(&axes, &idx));
                    }
                    err
                }
            })?;
            if runs.len() + rc.repeats as usize > MAX_RUNS {
                return Err(loc
                    .error(
                        "repeats",
                        format!("{points} matrix points x {} repeats are more than {MAX_RUNS} runs", rc.repeats),
                    )
                    .into());
            }
            for r in 0..rc.repeats {
                let mut one = rc.clone();
                one.seed = derive_seed(rc.seed, r);
                runs.push(one);
            }
        }
        applies::check(&runs, &loc, overrides)?;
        check_expectations(&runs, &loc)?;
        let name = runs.first().map(|r: &RunConfig| r.name.clone()).unwrap_or_else(|| default_name.into());
        Ok(Self { name, source: text.to_string(), runs, varying, notes, locator: loc, overrides: overrides.clone() })
    }

    /// Checks every run's site patterns (`preempt.sites`, schedule rules
    /// `site:...`) against the sites of its kernel build (built here, or
    /// taken from the cache): an unknown function, file or line is an error
    /// at the key's line, naming close matches. Runs that name no site
    /// build nothing here.
    pub fn check_kernel_sites(&self) -> Result<()> {
        for rc in &self.runs {
            let p = &rc.preempt;
            let uses_sites = !p.sites.is_empty()
                || p.schedule.iter().any(|r| {
                    matches!(r.at, pvlock_vmm::HoldAt::Site(_)) || matches!(r.until, pvlock_vmm::HoldUntil::Site(_))
                });
            if !uses_sites {
                continue;
            }
            let located = |e: pvlock_vmm::InvalidValue| self.locator.error(e.key, e.why);
            let Some(spec) = crate::kernel::spec_of(rc).map_err(located)? else {
                crate::kernel::sites::refuse_without_kernel(p).map_err(located)?;
                continue;
            };
            let build = crate::kernel::module_for(&spec)?;
            crate::kernel::sites::plan_for(&build, &mut p.clone()).map_err(located)?;
        }
        Ok(())
    }

    /// Checks what depends on this machine (before any run): a kernel
    /// variant's tree and patches exist, `host_cpus` within the CPUs this
    /// process may use.
    pub fn check_host(&self, available: usize) -> Result<(), ConfigError> {
        // A kernel variant's tree and patches (files of this machine).
        for rc in &self.runs {
            if let Err(e) = rc.check_kernel_inputs() {
                return Err(match self.overrides.flag_of(&e.key) {
                    Some((flag, _)) => {
                        ConfigError { file: "command line".into(), line: None, key: flag.into(), why: e.why }
                    }
                    None => self.locator.error(e.key, e.why),
                });
            }
        }
        let Some(rc) = self.runs.iter().max_by_key(|r| r.host_cpus) else { return Ok(()) };
        if rc.host_cpus as usize <= available {
            return Ok(());
        }
        let why = format!(
            "{} host CPUs asked for, but this machine lets pvlock run on {available} (0 = do not pin)",
            rc.host_cpus
        );
        Err(match self.overrides.flag_of("host_cpus") {
            Some((flag, _)) => ConfigError { file: "command line".into(), line: None, key: flag.into(), why },
            None => self.locator.error("host_cpus", why),
        })
    }
}

/// The dotted key a line of a config assigns (`seed = 9223372036854775808`
/// under `[lock]` is `lock.seed`), for syntax errors: the document did not
/// parse, so only the text can say.
fn key_on_text_line(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let here = lines.get(line.checked_sub(1)?)?;
    let (key, _) = here.split_once('=')?;
    let key: String = key.trim().chars().filter(|c| *c != '"' && *c != '\'').collect();
    if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)) {
        return None;
    }
    let section = lines[..line - 1].iter().rev().find_map(|l| {
        let l = l.trim();
        l.strip_prefix("[[").and_then(|r| r.strip_suffix("]]")).or_else(|| l.strip_prefix('[')?.strip_suffix(']'))
    });
    Some(match section {
        Some(s) => format!("{}.{key}", s.trim()),
        None => key,
    })
}

/// Every `[[expect]]` rule must select at least one run: a rule that
/// selects none is a typo or a value the matrix lost, and would silently
/// expect nothing.
fn check_expectations(runs: &[RunConfig], loc: &Locator) -> Result<(), ConfigError> {
    let Some(first) = runs.first().filter(|r| !r.expect.is_empty()) else { return Ok(()) };
    let rules = first.expect_rules().map_err(|e| loc.error(e.key, e.why))?;
    let configs: Vec<toml::Value> = runs.iter().filter_map(|r| toml::Value::try_from(r).ok()).collect();
    for (i, rule) in rules.iter().enumerate() {
        if !configs.iter().any(|c| expect::selects(&rule.keys, c)) {
            let wanted: Vec<String> = first.expect[i].matches.iter().map(|(k, v)| format!("{k} = {v}")).collect();
            return Err(loc.error(
                format!("expect[{i}]"),
                format!("selects no run of this experiment (where {})", wanted.join(", ")),
            ));
        }
    }
    Ok(())
}

/// A parse or type error in one point's text, located in the file.
fn type_error(loc: &Locator, text: &str, e: &toml::de::Error, axes: &[Axis], idx: &[usize]) -> ConfigError {
    let msg = e.message().trim().to_string();
    let Some(span) = e.span() else { return loc.error("(config)", msg) };
    // A point's text has the file's lines (see matrix::point_text).
    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
    let mut err = loc.error_at_line(line, None, msg);
    if let Some(a) = axes.iter().position(|a| loc.find(&a.key).is_some_and(|e| e.line == line)) {
        err.why += &format!(" (matrix value {})", axes[a].values[idx[a]]);
    }
    err
}

#[cfg(test)]
mod tests;
