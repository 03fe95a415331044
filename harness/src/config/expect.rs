//! Expected outcomes (`[[expect]]`): an experiment that runs known-buggy
//! variants, mutants or fault models says which of its runs must fail, so
//! that their detected failures count as expected (exit code, report) and
//! a failure that did not happen is an unexpected result.
//!
//! A rule selects runs by config values (`where`: dotted keys of the
//! schema, each a value or a list of alternatives) and names the outcome
//! they must have. The first rule that matches a run decides; a run no
//! rule matches must be `ok`.

use pvlock_vmm::{InvalidValue, RunStatus};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a run must end as.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Expected {
    /// `ok` (every run no rule names).
    #[default]
    Ok,
    /// Any detected failure: `failed`, `hang` or `guest-crash`.
    Failure,
    Failed,
    Hang,
    GuestCrash,
}

impl Expected {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Failure => "failure",
            Self::Failed => "failed",
            Self::Hang => "hang",
            Self::GuestCrash => "guest-crash",
        }
    }

    pub fn is_ok(&self) -> bool {
        *self == Self::Ok
    }

    /// Whether a run that ended as `status` met this expectation. An
    /// aborted run never does: it did not finish.
    pub fn admits(self, status: RunStatus) -> bool {
        match (self, status) {
            (_, RunStatus::Aborted) => false,
            (Self::Ok, s) => s == RunStatus::Ok,
            (Self::Failure, s) => s != RunStatus::Ok,
            (Self::Failed, s) => s == RunStatus::Failed,
            (Self::Hang, s) => s == RunStatus::Hang,
            (Self::GuestCrash, s) => s == RunStatus::GuestCrash,
        }
    }
}

/// One `[[expect]]` table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectRule {
    /// Dotted config key -> its value, or a list of alternatives (for a
    /// key whose value is a list, `preempt.windows`, a list of lists).
    /// Every key must match; no `where` matches every run.
    #[serde(rename = "where", default)]
    pub matches: BTreeMap<String, toml::Value>,
    /// Required: what the selected runs must end as.
    pub outcome: Expected,
}

/// A rule with its `where` typed: each key and its alternatives as a
/// run's serialized config spells them.
#[derive(Clone, Debug, PartialEq)]
pub struct TypedRule {
    pub keys: Vec<(String, Vec<toml::Value>)>,
    pub outcome: Expected,
}

/// Keys whose value is itself a list (see `matrix::LIST_KEYS`).
fn is_list_key(key: &str) -> bool {
    super::matrix::LIST_KEYS.contains(&key)
}

/// The value at a dotted key of a serialized config.
fn lookup<'a>(root: &'a toml::Value, key: &str) -> Option<&'a toml::Value> {
    key.split('.').try_fold(root, |v, k| v.as_table()?.get(k))
}

impl ExpectRule {
    /// Each `where` key with its alternatives as the schema spells them
    /// (a value set into a default config, typed, and written back): a
    /// typo, a wrong type or an unknown key is an error naming it.
    pub fn alternatives(&self, rule: usize) -> Result<Vec<(String, Vec<toml::Value>)>, InvalidValue> {
        let mut out = Vec::new();
        for (key, v) in &self.matches {
            let err = |why: String| InvalidValue::new(format!("expect[{rule}].where.{key}"), why);
            if key.is_empty() || key.starts_with("expect") {
                return Err(err("not a config key a run can be selected by".into()));
            }
            let alts: Vec<&toml::Value> = match v.as_array() {
                Some(a) if !is_list_key(key) || a.iter().all(toml::Value::is_array) => a.iter().collect(),
                _ => vec![v],
            };
            if alts.is_empty() {
                return Err(err("an empty list of values selects no run".into()));
            }
            let mut norm = Vec::new();
            for alt in alts {
                norm.push(normalize(key, alt).map_err(err)?);
            }
            out.push((key.clone(), norm));
        }
        Ok(out)
    }
}

/// `value` at `key` as a run's serialized config would hold it.
fn normalize(key: &str, value: &toml::Value) -> Result<toml::Value, String> {
    let mut root = toml::Value::try_from(super::RunConfig::default()).map_err(|e| e.to_string())?;
    let (last, sections) = key.rsplit_once('.').map(|(s, l)| (l, Some(s))).unwrap_or((key, None));
    let mut t = root.as_table_mut().ok_or("internal: config is not a table")?;
    for s in sections.into_iter().flat_map(|s| s.split('.')) {
        t = t.get_mut(s).and_then(toml::Value::as_table_mut).ok_or_else(|| format!("`{s}` is not a section"))?;
    }
    t.insert(last.to_string(), value.clone());
    let typed: super::RunConfig = root.try_into().map_err(|e: toml::de::Error| e.message().trim().to_string())?;
    let back = toml::Value::try_from(typed).map_err(|e| e.to_string())?;
    lookup(&back, key).cloned().ok_or_else(|| format!("`{key}` is not a key of one run"))
}

/// The outcome `rules` expect of a run whose serialized config is
/// `config`: the first rule that matches.
pub fn expected_of(rules: &[TypedRule], config: &toml::Value) -> Expected {
    rules.iter().find(|r| selects(&r.keys, config)).map(|r| r.outcome).unwrap_or_default()
}

/// Whether a rule's typed `where` selects the run whose serialized config
/// is `config`.
pub fn selects(keys: &[(String, Vec<toml::Value>)], config: &toml::Value) -> bool {
    keys.iter().all(|(k, alts)| lookup(config, k).is_some_and(|v| alts.contains(v)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_by_status() {
        use RunStatus::*;
        assert!(Expected::Ok.admits(Ok) && !Expected::Ok.admits(Failed));
        assert!(Expected::Failure.admits(Hang) && Expected::Failure.admits(GuestCrash));
        assert!(!Expected::Failure.admits(Ok) && !Expected::Failure.admits(Aborted));
        assert!(Expected::Hang.admits(Hang) && !Expected::Hang.admits(Failed));
        assert!(Expected::GuestCrash.admits(GuestCrash) && !Expected::Failed.admits(GuestCrash));
    }

    #[test]
    fn values_are_typed_by_the_schema() {
        assert_eq!(normalize("lock.variant", &"pv-v4.2".into()).unwrap(), toml::Value::from("pv-v4.2"));
        assert!(normalize("lock.variant", &"pv-v9".into()).unwrap_err().contains("pv-v9"));
        assert!(normalize("vcpus", &"four".into()).is_err());
        assert!(normalize("lock.nope", &1.into()).unwrap_err().contains("nope"));
        assert!(normalize("vcpus.x", &1.into()).is_err());
        assert!(normalize("lock", &1.into()).is_err());
    }
}
