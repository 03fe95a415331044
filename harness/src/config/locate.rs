//! Where each key of a config file is: dotted path -> line, from the
//! parser's own spans, so that every error can name the file line of the
//! key it is about (dotted and quoted keys, sub-tables and each element of
//! an array of tables included).

use std::collections::BTreeMap;
use std::ops::Range;
use toml_edit::{ImDocument, Item, Table, Value};

/// A config error: which key, why, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}{}: `{key}`: {why}", line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct ConfigError {
    pub file: String,
    /// The line of the key (or of its table), if the file has it.
    pub line: Option<usize>,
    pub key: String,
    pub why: String,
}

/// One key (or table) of the file.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Line of the key (a table: of its header), 1-based.
    pub line: usize,
    /// Byte range of the value in the file (none for tables).
    pub value: Option<Range<usize>>,
}

/// Every key of one config file.
#[derive(Clone, Debug, Default)]
pub struct Locator {
    file: String,
    entries: BTreeMap<String, Entry>,
    line_starts: Vec<usize>,
}

impl Locator {
    pub fn new(file: &str, text: &str, doc: &ImDocument<&str>) -> Self {
        let line_starts = std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect();
        let mut l = Self { file: file.to_string(), entries: BTreeMap::new(), line_starts };
        l.walk_table(doc.as_table(), "");
        l
    }

    /// 1-based line of byte `offset`.
    pub fn line_of_offset(&self, offset: usize) -> usize {
        self.line_starts.partition_point(|&s| s <= offset).max(1)
    }

    fn put(&mut self, path: String, span: Option<Range<usize>>, value: Option<Range<usize>>) {
        if let Some(s) = span.clone().or(value.clone()) {
            let line = self.line_of_offset(s.start);
            self.entries.insert(path, Entry { line, value });
        }
    }

    fn walk_table(&mut self, t: &Table, prefix: &str) {
        for (k, item) in t.iter() {
            let path = join(prefix, k);
            let key_span = t.get_key_value(k).and_then(|(key, _)| key.span());
            self.walk_item(item, path, key_span);
        }
    }

    fn walk_item(&mut self, item: &Item, path: String, key_span: Option<Range<usize>>) {
        match item {
            Item::Table(sub) => {
                self.put(path.clone(), sub.span().or(key_span), None);
                self.walk_table(sub, &path);
            }
            Item::ArrayOfTables(a) => {
                self.put(path.clone(), a.span().or(key_span.clone()), None);
                for (i, t) in a.iter().enumerate() {
                    let p = format!("{path}[{i}]");
                    self.put(p.clone(), t.span().or(key_span.clone()), None);
                    self.walk_table(t, &p);
                }
            }
            Item::Value(v) => self.walk_value(v, path, key_span),
            Item::None => {}
        }
    }

    fn walk_value(&mut self, v: &Value, path: String, key_span: Option<Range<usize>>) {
        self.put(path.clone(), key_span, v.span());
        if let Value::InlineTable(t) = v {
            for (k, inner) in t.iter() {
                let key_span = t.get_key_value(k).and_then(|(key, _)| key.span());
                let p = join(&path, k);
                match inner {
                    Value::InlineTable(_) => self.walk_value(inner, p, key_span),
                    _ => self.put(p, key_span, inner.span()),
                }
            }
        }
    }

    /// The line of `key` if the file sets exactly this key (no fallback to
    /// its table).
    pub fn line_of_key(&self, key: &str) -> Option<usize> {
        self.entries.get(key).map(|e| e.line)
    }

    /// The entry of `key`, or of its nearest enclosing table in the file.
    pub fn find(&self, key: &str) -> Option<&Entry> {
        let mut k = key;
        loop {
            if let Some(e) = self.entries.get(k) {
                return Some(e);
            }
            k = &k[..k.rfind(['.', '['])?];
        }
    }

    /// The innermost key on `line` (the one whose name `message` quotes, if
    /// several are on the line).
    pub fn key_on_line(&self, line: usize, message: &str) -> Option<String> {
        let on_line: Vec<&String> = self.entries.iter().filter(|(_, e)| e.line == line).map(|(k, _)| k).collect();
        let quoted = quoted(message);
        on_line
            .iter()
            .find(|k| quoted.as_deref().is_some_and(|q| leaf(k) == q))
            .or_else(|| on_line.iter().max_by_key(|k| k.len()))
            .map(|k| k.to_string())
    }

    /// An error about `key`, located.
    pub fn error(&self, key: impl Into<String>, why: impl Into<String>) -> ConfigError {
        let key = key.into();
        ConfigError { file: self.file.clone(), line: self.find(&key).map(|e| e.line), key, why: why.into() }
    }

    /// An error at `line` (a parse or type error), about the key there.
    pub fn error_at_line(&self, line: usize, key_hint: Option<String>, why: impl Into<String>) -> ConfigError {
        let why = why.into();
        let key = key_hint.or_else(|| self.key_on_line(line, &why)).unwrap_or_else(|| "(syntax)".into());
        ConfigError { file: self.file.clone(), line: Some(line), key, why }
    }

    pub fn file(&self) -> &str {
        &self.file
    }
}

fn join(prefix: &str, k: &str) -> String {
    if prefix.is_empty() {
        k.to_string()
    } else {
        format!("{prefix}.{k}")
    }
}

fn leaf(path: &str) -> &str {
    path.rsplit(['.', ']']).next().unwrap_or(path)
}

/// The first `quoted` word of a serde message ("unknown field `foo`").
fn quoted(msg: &str) -> Option<String> {
    let start = msg.find('`')? + 1;
    let end = start + msg[start..].find('`')?;
    Some(msg[start..end].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(text: &str) -> Locator {
        Locator::new("t.toml", text, &ImDocument::parse(text).unwrap())
    }

    #[test]
    fn dotted_quoted_sub_tables_and_arrays_of_tables_have_lines() {
        let l = loc(
            "\"vcpus\" = 0\nlock.variant = \"x\"\n[lock.sub]\na = 1\n[[preempt.schedule]]\nat = \"handoff\"\n\n[[preempt.schedule]]\nuntil = \"x\"\n[torture]\nx = { y = 1 }\n",
        );
        let line = |k: &str| l.find(k).map(|e| e.line);
        assert_eq!(line("vcpus"), Some(1));
        assert_eq!(line("lock.variant"), Some(2));
        assert_eq!(line("lock.sub"), Some(3));
        assert_eq!(line("lock.sub.a"), Some(4));
        assert_eq!(line("preempt.schedule[0].at"), Some(6));
        assert_eq!(line("preempt.schedule[1]"), Some(8));
        assert_eq!(line("preempt.schedule[1].until"), Some(9));
        // A key the file does not set: its table's line.
        assert_eq!(line("preempt.schedule[1].at"), Some(8));
        assert_eq!(line("torture.x.y"), Some(11));
        assert_eq!(line("nowhere"), None);
    }
}
