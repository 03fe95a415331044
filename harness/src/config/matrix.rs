//! The matrix of a config: any scalar may be a list (an axis); a config is
//! the cartesian product of its axes. Points are counted before any is
//! built, and each point is the file's own text with every axis replaced by
//! one of its values in place, so that a point's parse and type errors
//! name lines of the file.

use super::locate::{ConfigError, Locator};
use std::ops::Range;
use toml_edit::{Item, Table, Value};

/// Keys whose value is a list by nature: an axis only as a list of lists.
pub const LIST_KEYS: &[&str] =
    &["preempt.windows", "preempt.sites", "preempt.schedule", "lock.kernel_patches", "expect"];

/// Most matrix points one config may have (the runs are points x repeats).
pub const MAX_POINTS: u64 = 10_000;

/// One axis: a key and the text of each of its values.
#[derive(Clone, Debug)]
pub struct Axis {
    pub key: String,
    /// Byte range of the list in the file.
    pub span: Range<usize>,
    /// Each value's TOML text.
    pub values: Vec<String>,
}

/// Collects the axes of a document, ordered by key (table by table), the
/// order runs and run keys have always had.
pub fn axes(doc: &Table, loc: &Locator) -> Result<Vec<Axis>, ConfigError> {
    let mut out = Vec::new();
    collect(doc, "", loc, &mut out)?;
    out.sort_by(|a, b| a.key.split('.').cmp(b.key.split('.')));
    Ok(out)
}

fn collect(t: &Table, prefix: &str, loc: &Locator, out: &mut Vec<Axis>) -> Result<(), ConfigError> {
    for (k, item) in t.iter() {
        let path = if prefix.is_empty() { k.to_string() } else { format!("{prefix}.{k}") };
        match item {
            Item::Table(sub) => collect(sub, &path, loc, out)?,
            Item::Value(Value::InlineTable(it)) => {
                for (ik, v) in it.iter() {
                    value_axis(v, &format!("{path}.{ik}"), loc, out)?;
                }
            }
            Item::Value(v) => value_axis(v, &path, loc, out)?,
            // Arrays of tables ([[preempt.schedule]]) are values, not axes.
            Item::ArrayOfTables(_) | Item::None => {}
        }
    }
    Ok(())
}

fn value_axis(v: &Value, path: &str, loc: &Locator, out: &mut Vec<Axis>) -> Result<(), ConfigError> {
    let Value::Array(items) = v else { return Ok(()) };
    let list_key = LIST_KEYS.contains(&path);
    if list_key && (items.is_empty() || !items.iter().all(Value::is_array)) {
        return Ok(()); // a plain list value
    }
    if items.is_empty() {
        return Err(loc.error(path, "an empty list gives no runs"));
    }
    if !list_key && items.iter().any(|i| i.is_array() || i.is_inline_table()) {
        return Err(loc.error(path, "a matrix axis must be a list of scalars"));
    }
    let Some(span) = v.span() else { return Err(loc.error(path, "internal: a list without a position")) };
    let values = items
        .iter()
        .map(|i| {
            let mut i = i.clone();
            i.decor_mut().clear();
            i.to_string()
        })
        .collect();
    out.push(Axis { key: path.to_string(), span, values });
    Ok(())
}

/// Number of points of `axes` (saturating), and its factors for messages.
pub fn count(axes: &[Axis]) -> (u64, String) {
    let n = axes.iter().fold(1u64, |n, a| n.saturating_mul(a.values.len() as u64));
    let factors: Vec<String> = axes.iter().map(|a| format!("{} {}", a.values.len(), a.key)).collect();
    (n, factors.join(" x "))
}

/// The points, in odometer order (the last axis varies fastest): for
/// each, which value of each axis.
pub fn points(axes: &[Axis]) -> impl Iterator<Item = Vec<usize>> + '_ {
    let total = count(axes).0;
    (0..total).map(move |mut i| {
        let mut idx = vec![0; axes.len()];
        for (a, axis) in axes.iter().enumerate().rev() {
            let n = axis.values.len() as u64;
            idx[a] = (i % n) as usize;
            i /= n;
        }
        idx
    })
}

/// The file's text with axis `a` replaced by its value `idx[a]`, keeping
/// every line where it was (a list over several lines leaves blank lines).
pub fn point_text(text: &str, axes: &[Axis], idx: &[usize]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    let mut in_file_order: Vec<usize> = (0..axes.len()).collect();
    in_file_order.sort_by_key(|&a| axes[a].span.start);
    for a in in_file_order {
        let axis = &axes[a];
        out.push_str(&text[at..axis.span.start]);
        out.push_str(&axis.values[idx[a]]);
        let newlines = text[axis.span.clone()].matches('\n').count();
        // Inside a value (a list of lists), newlines are fine; after a scalar
        // they end the line early, which TOML allows too.
        for _ in 0..newlines {
            out.push('\n');
        }
        at = axis.span.end;
    }
    out.push_str(&text[at..]);
    out
}

/// `key=value` of each axis at one point, for messages.
pub fn describe(axes: &[Axis], idx: &[usize]) -> String {
    axes.iter().enumerate().map(|(a, ax)| format!("{}={}", ax.key, ax.values[idx[a]])).collect::<Vec<_>>().join(", ")
}
