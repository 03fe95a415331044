//! The sites of a kernel build (`pvlock_abi::sites`): every shared-memory
//! operation the tree's code performs through the stand-ins, read from the
//! module image's `pvlock_sites` section; the patterns that select them
//! (`preempt.sites`, schedule rules `site:...`); and the run's site plan.

use super::KernelError;
use object::{Object, ObjectSection};
use pvlock_abi::sites::{KernelSite, SiteOp, SITE_EXIT, SITE_HASH, SITE_STALL, SITE_TRACK};
use pvlock_vmm::config::{HoldAt, HoldUntil, PreemptConfig};
use pvlock_vmm::sites::SitePlan;
use pvlock_vmm::InvalidValue;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One site of a build.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Site {
    /// Index in the build's table (the guest's and the VMM's name for it).
    pub index: u32,
    pub function: String,
    /// Tree-relative (`kernel/locking/qspinlock_paravirt.h`).
    pub file: String,
    pub line: u32,
    pub op: SiteOpName,
    /// Bytes touched (0: a fence or a call).
    pub size: u8,
}

/// A [`SiteOp`] as records spell it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SiteOpName(pub SiteOp);

impl Serialize for SiteOpName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.name())
    }
}

impl<'de> Deserialize<'de> for SiteOpName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        SiteOp::from_name(&s).map(SiteOpName).ok_or_else(|| serde::de::Error::custom(format!("unknown site op `{s}`")))
    }
}

impl Site {
    /// `cmpxchg pv_kick_node() at kernel/locking/qspinlock_paravirt.h:377`.
    pub fn label(&self) -> String {
        format!("{} {}() at {}:{}", self.op.0.name(), self.function, self.file, self.line)
    }
}

/// Every site of a build, in table order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteTable {
    pub sites: Vec<Site>,
}

impl SiteTable {
    /// Reads the table from a linked module image (the `pvlock_sites`
    /// section; its string pointers are absolute addresses of the image).
    pub fn from_image(image: &[u8]) -> Result<Self, KernelError> {
        let bad = |why: String| KernelError::Bad(format!("the module image's site table: {why}"));
        let file = object::File::parse(image).map_err(|e| bad(e.to_string()))?;
        let Some(section) = file.section_by_name("pvlock_sites") else {
            // A build without sites (lock.kernel_sites = false).
            return Ok(Self::default());
        };
        let data = section.data().map_err(|e| bad(e.to_string()))?;
        let size = std::mem::size_of::<KernelSite>();
        if !data.len().is_multiple_of(size) {
            return Err(bad(format!("{} bytes is not a whole number of {size}-byte sites", data.len())));
        }
        // The strings are in the image's other sections: read them by address.
        let sections: Vec<(u64, &[u8])> = file
            .sections()
            .filter_map(|s| s.data().ok().map(|d| (s.address(), d)))
            .filter(|(_, d)| !d.is_empty())
            .collect();
        let string_at = |addr: u64| -> Result<String, KernelError> {
            for (base, d) in &sections {
                if addr >= *base && addr < base + d.len() as u64 {
                    let rest = &d[(addr - base) as usize..];
                    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
                    return Ok(String::from_utf8_lossy(&rest[..end]).into_owned());
                }
            }
            Err(bad(format!("a site names a string at {addr:#x}, outside the image")))
        };
        let mut sites = Vec::new();
        for (i, chunk) in data.chunks_exact(size).enumerate() {
            // SAFETY: KernelSite is repr(C) plain integers (any bit pattern
            // is valid) and `chunk` has exactly its size; read_unaligned
            // copes with any alignment of the buffer.
            let s = unsafe { std::ptr::read_unaligned(chunk.as_ptr() as *const KernelSite) };
            let op = SiteOp::from_u8(s.op).ok_or_else(|| bad(format!("site {i} has unknown op {}", s.op)))?;
            sites.push(Site {
                index: i as u32,
                function: string_at(s.func)?,
                file: string_at(s.file)?,
                line: s.line,
                op: SiteOpName(op),
                size: s.size,
            });
        }
        Ok(Self { sites })
    }

    /// The sites of one function, in source order (line, then table order).
    fn of_function<'a>(&'a self, f: &'a str) -> impl Iterator<Item = &'a Site> + 'a {
        let mut v: Vec<&Site> = self.sites.iter().filter(|s| glob(f, &s.function)).collect();
        v.sort_by_key(|s| (s.file.clone(), s.line, s.index));
        v.into_iter()
    }

    /// Resolves a site pattern to site indices: `FUNCTION` (with `*`),
    /// `FILE[:LINE]` (a path or its last components, `*` allowed; LINE a
    /// number or `*`), `FUNCTION:OP` or `*:OP`, `FUNCTION:OP:N` (the N-th,
    /// from 1, such site of the function in source order). An error says
    /// what does not exist and names close matches.
    pub fn resolve(&self, pattern: &str) -> Result<Vec<u32>, String> {
        let parts: Vec<&str> = pattern.split(':').collect();
        if parts.iter().any(|p| p.is_empty()) || parts.len() > 3 {
            return Err(format!(
                "`{pattern}` is not FUNCTION, FILE[:LINE], FUNCTION:OP[:N] or *:OP (see `pvlock list sites`)"
            ));
        }
        let file_like = |p: &str| p.contains('/') || p.contains(".h") || p.contains(".c");
        let hits: Vec<u32> = if file_like(parts[0]) {
            if parts.len() > 2 {
                return Err(format!("`{pattern}`: a file pattern is FILE or FILE:LINE"));
            }
            let files: Vec<&Site> = self.sites.iter().filter(|s| file_matches(parts[0], &s.file)).collect();
            if files.is_empty() {
                let names = self.files();
                return Err(format!("no site in a file `{}`; {}", parts[0], close("files", parts[0], &names)));
            }
            match parts.get(1) {
                None | Some(&"*") => files.iter().map(|s| s.index).collect(),
                Some(l) => {
                    let line: u32 = l.parse().map_err(|_| format!("`{pattern}`: `{l}` is not a line number or `*`"))?;
                    let at: Vec<u32> = files.iter().filter(|s| s.line == line).map(|s| s.index).collect();
                    if at.is_empty() {
                        let mut lines: Vec<u32> = files.iter().map(|s| s.line).collect();
                        lines.sort_unstable();
                        lines.dedup();
                        let near: Vec<String> = {
                            let mut l = lines.clone();
                            l.sort_by_key(|x| x.abs_diff(line));
                            l.iter().take(5).map(|x| x.to_string()).collect()
                        };
                        return Err(format!(
                            "no site at {}:{line}; sites nearby at lines {}",
                            parts[0],
                            near.join(", ")
                        ));
                    }
                    at
                }
            }
        } else {
            let func = parts[0];
            let in_func: Vec<&Site> = self.of_function(func).collect();
            if in_func.is_empty() {
                let names = self.functions();
                return Err(format!("no site in a function `{func}`; {}", close("functions", func, &names)));
            }
            let op = match parts.get(1) {
                None | Some(&"*") => None,
                Some(o) => Some(SiteOp::from_name(o).ok_or_else(|| {
                    let names: Vec<&str> = SiteOp::ALL.iter().map(|o| o.name()).collect();
                    format!("`{o}` is not a site operation (one of: {})", names.join(", "))
                })?),
            };
            let with_op: Vec<&Site> = in_func.into_iter().filter(|s| op.is_none_or(|o| s.op.0 == o)).collect();
            if with_op.is_empty() {
                let mut have: Vec<&str> = self.of_function(func).map(|s| s.op.0.name()).collect();
                have.sort_unstable();
                have.dedup();
                return Err(format!("`{func}` has no `{}` site (it has: {})", parts[1], have.join(", ")));
            }
            match parts.get(2) {
                None => with_op.iter().map(|s| s.index).collect(),
                Some(n) => {
                    let n: usize = n.parse().ok().filter(|&n| n >= 1).ok_or_else(|| {
                        format!("`{pattern}`: `{n}` is not a site number (1 = the first in source order)")
                    })?;
                    let s = with_op
                        .get(n - 1)
                        .ok_or_else(|| format!("`{pattern}`: `{func}` has only {} such site(s)", with_op.len()))?;
                    vec![s.index]
                }
            }
        };
        Ok(hits)
    }

    pub fn functions(&self) -> Vec<String> {
        let mut v: Vec<String> = self.sites.iter().map(|s| s.function.clone()).collect();
        v.sort();
        v.dedup();
        v
    }

    pub fn files(&self) -> Vec<String> {
        let mut v: Vec<String> = self.sites.iter().map(|s| s.file.clone()).collect();
        v.sort();
        v.dedup();
        v
    }

    /// The run's site plan from its `[preempt]` keys, and the schedule's
    /// site rules resolved in place. Errors name the key.
    pub fn plan(&self, p: &mut PreemptConfig) -> Result<SitePlan, InvalidValue> {
        let mut flags: Vec<u8> = self
            .sites
            .iter()
            .map(|s| {
                let mut f = if p.site_track { SITE_TRACK } else { 0 };
                // A pointer-sized store may create or remove a hash entry,
                // a pointer-sized load may look one up: the guest checks
                // those against the tree's table (and remembers who last
                // touched each entry's node, for a stale entry's report).
                if (s.op.0.writes() || s.op.0.loads()) && s.size == 8 {
                    f |= SITE_HASH;
                }
                f
            })
            .collect();
        for (i, pat) in p.sites.iter().enumerate() {
            let hits = self.resolve(pat).map_err(|why| InvalidValue::new(format!("preempt.sites[{i}]"), why))?;
            for h in hits {
                flags[h as usize] |= SITE_STALL;
            }
        }
        for (i, r) in p.schedule.iter_mut().enumerate() {
            if let HoldAt::Site(s) = &mut r.at {
                s.sites =
                    self.resolve(&s.spec).map_err(|why| InvalidValue::new(format!("preempt.schedule[{i}].at"), why))?;
                for &h in &s.sites {
                    flags[h as usize] |= SITE_EXIT;
                }
            }
            if let HoldUntil::Site(s) = &mut r.until {
                s.sites = self
                    .resolve(&s.spec)
                    .map_err(|why| InvalidValue::new(format!("preempt.schedule[{i}].until"), why))?;
                for &h in &s.sites {
                    flags[h as usize] |= SITE_EXIT;
                }
            }
        }
        let prob = (p.site_prob * u32::MAX as f64).round() as u32;
        Ok(SitePlan { flags, prob, stall_us: p.site_stall_us })
    }
}

/// A config's site patterns that name no site of `table`: the first, as
/// the error a config load reports.
pub fn check_patterns(table: &SiteTable, p: &PreemptConfig) -> Result<(), InvalidValue> {
    table.plan(&mut p.clone()).map(|_| ())
}

/// The site plan of a run of build `k` (the schedule's site rules are
/// resolved in `p`); None for a build without sites that uses none.
pub fn plan_for(k: &super::KernelBuild, p: &mut PreemptConfig) -> Result<Option<SitePlan>, InvalidValue> {
    if k.sites.sites.is_empty() {
        refuse_without_kernel(p).map_err(|e| {
            InvalidValue::new(e.key, "this kernel build has no sites (lock.kernel_sites = false)".to_string())
        })?;
        return Ok(None);
    }
    k.sites.plan(p).map(Some)
}

/// Sites exist only in kernel builds: a run of another variant that names
/// one is refused, naming the key.
pub fn refuse_without_kernel(p: &PreemptConfig) -> Result<(), InvalidValue> {
    let why = "sites are the shared-memory operations of a kernel build: use a kernel variant \
               (kernel-pv, kernel-native) with --kernel-tree";
    if !p.sites.is_empty() {
        return Err(InvalidValue::new("preempt.sites", why));
    }
    for (i, r) in p.schedule.iter().enumerate() {
        if matches!(r.at, HoldAt::Site(_)) {
            return Err(InvalidValue::new(format!("preempt.schedule[{i}].at"), why));
        }
        if matches!(r.until, HoldUntil::Site(_)) {
            return Err(InvalidValue::new(format!("preempt.schedule[{i}].until"), why));
        }
    }
    Ok(())
}

/// The text of `file:line` in build `k`'s (patched) sources, trimmed.
pub fn source_line(k: &super::KernelBuild, file: &str, line: u32) -> Option<String> {
    let text = k.sources.get(file)?;
    text.lines().nth(line.checked_sub(1)? as usize).map(|l| l.trim().to_string())
}

/// Adds what the run did at the sites of build `k` to its record: stalls
/// per site, hold sites with their source line, and for a run that did not
/// end OK the last site (file:line and text) each vCPU passed.
pub fn annotate(k: &super::KernelBuild, r: &pvlock_vmm::RunReport, rec: &mut crate::record::Record) {
    for h in &mut rec.diagnosis.holds {
        if let Some(s) = &mut h.site {
            s.source = source_line(k, &s.file, s.line);
        }
    }
    let Some(mut stats) = SiteStats::from_report(&k.sites, r) else { return };
    if rec.status == pvlock_vmm::RunStatus::Ok {
        stats.last.clear();
    } else {
        for (cpu, label) in &mut stats.last {
            if let Some(s) =
                r.last_sites.get(*cpu as usize).copied().flatten().and_then(|i| k.sites.sites.get(i as usize))
            {
                if let Some(text) = source_line(k, &s.file, s.line) {
                    *label = format!("{label}: {text}");
                }
            }
        }
    }
    rec.kernel_sites = (stats != SiteStats::default()).then_some(stats);
}

/// `pvlock list sites`: the build's sites grouped by function (in source
/// order), each with its operation, file:line and the line's text.
pub fn render_listing(k: &super::KernelBuild) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let mut by_fn: BTreeMap<(String, String), Vec<&Site>> = BTreeMap::new();
    for s in &k.sites.sites {
        by_fn.entry((s.file.clone(), s.function.clone())).or_default().push(s);
    }
    let mut groups: Vec<_> = by_fn.into_iter().collect();
    groups.sort_by_key(|((file, _), v)| (file.clone(), v.iter().map(|s| s.line).min()));
    let _ = writeln!(
        out,
        "{} sites in Linux {} ({}, {} patch(es)); patterns: FUNCTION, FILE[:LINE], FUNCTION:OP[:N], *:OP",
        k.sites.sites.len(),
        k.info.version,
        k.info.flavour.name(),
        k.info.patches.len()
    );
    for ((file, func), mut sites) in groups {
        sites.sort_by_key(|s| (s.line, s.index));
        let _ = writeln!(out, "\n{func}()  [{file}]");
        let mut nth: BTreeMap<SiteOp, usize> = BTreeMap::new();
        for s in sites {
            let n = nth.entry(s.op.0).or_insert(0);
            *n += 1;
            let text = source_line(k, &s.file, s.line).unwrap_or_default();
            let _ = writeln!(out, "  {:>5}  {:<24} {}", s.line, format!("{}:{}", s.op.0.name(), n), text);
        }
    }
    out
}

/// `*` matches any run of characters.
pub fn glob(pat: &str, s: &str) -> bool {
    fn go(p: &[u8], s: &[u8]) -> bool {
        match p.split_first() {
            None => s.is_empty(),
            Some((b'*', rest)) => (0..=s.len()).any(|i| go(rest, &s[i..])),
            Some((c, rest)) => s.first() == Some(c) && go(rest, &s[1..]),
        }
    }
    go(pat.as_bytes(), s.as_bytes())
}

/// A file pattern matches the whole tree-relative path or its last
/// components (`qspinlock_paravirt.h`, `locking/qspinlock.c`).
fn file_matches(pat: &str, file: &str) -> bool {
    glob(pat, file) || file.match_indices('/').any(|(i, _)| glob(pat, &file[i + 1..]))
}

/// "close matches: a, b" (by shared substring, then edit distance), or the
/// whole list when short.
fn close(what: &str, name: &str, names: &[String]) -> String {
    let mut scored: Vec<(usize, &String)> = names
        .iter()
        .map(|n| {
            let d = edit_distance(name, n);
            (if n.contains(name) || name.contains(n.as_str()) { d.min(1) } else { d }, n)
        })
        .collect();
    scored.sort();
    let near: Vec<&str> =
        scored.iter().filter(|(d, _)| *d <= name.len().max(3) / 2).take(5).map(|(_, n)| n.as_str()).collect();
    if near.is_empty() {
        format!("the build's {what}: {}", names.join(", "))
    } else {
        format!("close matches: {}", near.join(", "))
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push((prev[j] + (ca != cb) as usize).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// What a record says about a run's sites: where it stalled and how often,
/// and where each vCPU last was (a failure's kernel file:line).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SiteStats {
    /// Sites the run stalled at (random mode), most stalls first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stalls: Vec<SiteCount>,
    /// Per vCPU, the last site it passed (only with `preempt.site_track`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub last: BTreeMap<u32, String>,
    /// The stalls by trial (`preempt.site_mode`, `pct_steps`): counts and
    /// the distinct stall signatures (site indices as in `stalls`' table).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<pvlock_vmm::sites::ScheduleReport>,
    /// The first stalls the guest chose, labelled: `trial T vCPU C: SITE`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chosen: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SiteCount {
    pub site: String,
    pub count: u64,
}

impl SiteStats {
    pub fn from_report(table: &SiteTable, r: &pvlock_vmm::RunReport) -> Option<Self> {
        let mut stalls: Vec<SiteCount> = r
            .site_stalls
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .filter_map(|(i, &n)| table.sites.get(i).map(|s| SiteCount { site: s.label(), count: n }))
            .collect();
        stalls.sort_by(|a, b| b.count.cmp(&a.count).then(a.site.cmp(&b.site)));
        let last = r
            .last_sites
            .iter()
            .enumerate()
            .filter_map(|(c, s)| s.and_then(|i| table.sites.get(i as usize)).map(|s| (c as u32, s.label())))
            .collect();
        let schedule = r.site_schedule.clone();
        let chosen = schedule.iter().flat_map(|sc| &sc.first).map(|c| {
            let site = table.sites.get(c.site as usize).map_or_else(|| format!("site {}", c.site), |s| s.label());
            format!("trial {} vCPU {}: {site}", c.trial, c.cpu)
        });
        let s = Self { stalls, last, schedule: schedule.clone(), chosen: chosen.collect() };
        (s != Self::default()).then_some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(index: u32, function: &str, file: &str, line: u32, op: SiteOp) -> Site {
        Site { index, function: function.into(), file: file.into(), line, op: SiteOpName(op), size: 8 }
    }

    fn table() -> SiteTable {
        let pv = "kernel/locking/qspinlock_paravirt.h";
        SiteTable {
            sites: vec![
                site(0, "pv_hash", pv, 217, SiteOp::Cmpxchg),
                site(1, "pv_hash", pv, 218, SiteOp::WriteOnce),
                site(2, "pv_kick_node", pv, 387, SiteOp::WriteOnce),
                site(3, "pv_kick_node", pv, 377, SiteOp::Cmpxchg),
                site(4, "xchg_tail", "kernel/locking/qspinlock.c", 190, SiteOp::Cmpxchg),
            ],
        }
    }

    #[test]
    fn patterns_select_by_function_file_line_and_op() {
        let t = table();
        assert_eq!(t.resolve("pv_kick_node").unwrap(), vec![3, 2], "source order");
        assert_eq!(t.resolve("pv_*").unwrap().len(), 4);
        assert_eq!(t.resolve("qspinlock_paravirt.h:*").unwrap(), vec![0, 1, 2, 3]);
        assert_eq!(t.resolve("qspinlock_paravirt.h:387").unwrap(), vec![2]);
        assert_eq!(t.resolve("kernel/locking/qspinlock.c").unwrap(), vec![4]);
        assert_eq!(t.resolve("*:cmpxchg").unwrap(), vec![4, 0, 3], "source order: by file, then line");
        assert_eq!(t.resolve("pv_kick_node:write_once:1").unwrap(), vec![2]);
        assert_eq!(t.resolve("pv_hash:*:2").unwrap(), vec![1]);
    }

    #[test]
    fn bad_patterns_say_what_is_missing_and_what_is_close() {
        let t = table();
        let e = t.resolve("pv_kick_nod").unwrap_err();
        assert!(e.contains("no site in a function `pv_kick_nod`") && e.contains("close matches: pv_kick_node"), "{e}");
        let e = t.resolve("qspinlock_paravrt.h").unwrap_err();
        assert!(e.contains("no site in a file") && e.contains("qspinlock_paravirt.h"), "{e}");
        let e = t.resolve("qspinlock_paravirt.h:300").unwrap_err();
        assert!(e.contains("no site at qspinlock_paravirt.h:300") && e.contains("217"), "{e}");
        assert!(t.resolve("pv_hash:xchg").unwrap_err().contains("has no `xchg` site (it has: cmpxchg, write_once)"));
        assert!(t.resolve("pv_hash:cas").unwrap_err().contains("not a site operation"));
        assert!(t.resolve("pv_hash:cmpxchg:2").unwrap_err().contains("only 1"));
        assert!(t.resolve("a::b").is_err());
    }

    #[test]
    fn the_plan_marks_stall_exit_hash_and_track_sites() {
        let t = table();
        let mut p = PreemptConfig { sites: vec!["pv_kick_node".into()], site_prob: 1.0, ..Default::default() };
        p.schedule.push(pvlock_vmm::HoldRule {
            until: HoldUntil::Site(pvlock_vmm::sites::SiteRef::parse("xchg_tail").unwrap()),
            ..pvlock_vmm::HoldRule::at_point(HoldAt::Site(
                pvlock_vmm::sites::SiteRef::parse("pv_hash:cmpxchg").unwrap(),
            ))
        });
        let plan = t.plan(&mut p).unwrap();
        assert_eq!(plan.prob, u32::MAX);
        assert_eq!(plan.flags[0], SITE_TRACK | SITE_HASH | SITE_EXIT);
        assert_eq!(plan.flags[2], SITE_TRACK | SITE_HASH | SITE_STALL);
        assert_eq!(plan.flags[4], SITE_TRACK | SITE_HASH | SITE_EXIT);
        let HoldAt::Site(s) = &p.schedule[0].at else { panic!() };
        assert_eq!(s.sites, vec![0]);
        let mut bad = PreemptConfig { sites: vec!["nope".into()], ..Default::default() };
        assert_eq!(t.plan(&mut bad).unwrap_err().key, "preempt.sites[0]");
    }
}
