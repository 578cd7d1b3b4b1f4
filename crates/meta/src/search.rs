//! The search index, kept in the same transactions as the rows it
//! describes: one full-text document per repository (name, tags, and the
//! titles, descriptions, labels and platforms of its tagged manifests and
//! their index children), label and platform filter tables, pull counters.
//!
//! Triggers on `tags` and `manifests` record which repositories changed in
//! `search_dirty`; `reindex_dirty` rebuilds their entries before the
//! writing transaction commits. Whatever deletes or tags manifests, the
//! index cannot disagree with what is stored, even after a crash.

use crate::{PullCount, RepoFilter, RepositoryInfo, SearchFields, SearchHit, SearchPage, SearchQuery, TagDetail};
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::{BTreeSet, HashSet};

/// Longest full-text body kept per repository.
const MAX_BODY: usize = 64 * 1024;
/// Tags reported with each hit.
const HIT_TAGS: usize = 10;

const KEY_END: char = '\u{1f}';
const PAIR_END: char = '\u{1e}';

fn clean(s: &str) -> String {
    s.chars().filter(|c| *c != KEY_END && *c != PAIR_END).collect()
}

fn encode_labels(labels: &[(String, String)]) -> String {
    let mut out = String::new();
    for (k, v) in labels {
        out.push_str(&clean(k));
        out.push(KEY_END);
        out.push_str(&clean(v));
        out.push(PAIR_END);
    }
    out
}

fn decode_labels(s: &str) -> impl Iterator<Item = (&str, &str)> {
    s.split(PAIR_END).filter_map(|p| p.split_once(KEY_END))
}

/// Stores what search keeps of one manifest. With encryption at rest only
/// platforms are kept: titles, descriptions and labels come from sealed
/// content and must not be readable on disk.
pub(crate) fn put_fields(tx: &Connection, repo_id: i64, digest: &str, f: &SearchFields, encrypted: bool) -> rusqlite::Result<()> {
    let platforms = f.platforms.join(" ");
    let (title, description, labels, created) = if encrypted {
        (None, None, None, None)
    } else {
        (f.title.as_deref(), f.description.as_deref(), Some(encode_labels(&f.labels)), f.created.as_deref())
    };
    tx.execute(
        "INSERT OR REPLACE INTO search_manifests(repo_id, digest, title, description, labels, platforms, created)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![repo_id, digest, title, description, labels, platforms, created],
    )?;
    Ok(())
}

/// Rebuilds the entries of every repository marked as changed.
pub(crate) fn reindex_dirty(tx: &Connection) -> rusqlite::Result<()> {
    let ids: Vec<i64> = {
        let mut stmt = tx.prepare_cached("SELECT repo_id FROM search_dirty")?;
        let ids = stmt.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
        ids
    };
    if ids.is_empty() {
        return Ok(());
    }
    for id in ids {
        reindex(tx, id)?;
    }
    tx.execute("DELETE FROM search_dirty", [])?;
    Ok(())
}

fn reindex(tx: &Connection, id: i64) -> rusqlite::Result<()> {
    tx.execute("DELETE FROM search_docs WHERE rowid = ?1", [id])?;
    tx.execute("DELETE FROM search_labels WHERE repo_id = ?1", [id])?;
    tx.execute("DELETE FROM search_platforms WHERE repo_id = ?1", [id])?;
    tx.execute("DELETE FROM search_repos WHERE repo_id = ?1", [id])?;
    tx.execute("DELETE FROM search_suffixes WHERE repo_id = ?1", [id])?;
    // Listed like the catalog: while the repository holds a manifest.
    let row: Option<(String, i64)> = tx
        .query_row(
            "SELECT r.name, (SELECT COALESCE(MAX(created_at), 0) FROM manifests WHERE repo_id = r.id)
             FROM repositories r WHERE r.id = ?1 AND EXISTS (SELECT 1 FROM manifests m WHERE m.repo_id = r.id)",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((name, mut updated_at)) = row else { return Ok(()) };
    let mut tags = Vec::new();
    {
        let mut stmt = tx.prepare_cached("SELECT name, updated_at FROM tags WHERE repo_id = ?1 ORDER BY updated_at DESC, name")?;
        let mut rows = stmt.query([id])?;
        while let Some(r) = rows.next()? {
            tags.push(r.get::<_, String>(0)?);
            updated_at = updated_at.max(r.get(1)?);
        }
    }
    // Tagged manifests and the children of tagged indexes, newest first.
    let mut stmt = tx.prepare_cached(
        "WITH live(digest, at) AS (
             SELECT digest, MAX(updated_at) FROM tags WHERE repo_id = ?1 GROUP BY digest
             UNION ALL
             SELECT mr.target, t.updated_at FROM manifest_refs mr
             JOIN tags t ON t.repo_id = mr.repo_id AND t.digest = mr.manifest
             WHERE mr.repo_id = ?1 AND mr.kind = 1)
         SELECT s.title, s.description, s.labels, s.platforms FROM live l
         JOIN search_manifests s ON s.repo_id = ?1 AND s.digest = l.digest
         ORDER BY l.at DESC",
    )?;
    let mut rows = stmt.query([id])?;
    let mut description: Option<String> = None;
    let mut title: Option<String> = None;
    let mut text: BTreeSet<String> = BTreeSet::new();
    let mut labels: BTreeSet<(String, String)> = BTreeSet::new();
    let mut platforms: BTreeSet<String> = BTreeSet::new();
    while let Some(r) = rows.next()? {
        let t: Option<String> = r.get(0)?;
        let d: Option<String> = r.get(1)?;
        let l: Option<String> = r.get(2)?;
        let p: Option<String> = r.get(3)?;
        if let Some(t) = t.filter(|t| !t.is_empty()) {
            title.get_or_insert_with(|| t.clone());
            text.insert(t);
        }
        if let Some(d) = d.filter(|d| !d.is_empty()) {
            description.get_or_insert_with(|| d.clone());
            text.insert(d);
        }
        for (k, v) in decode_labels(l.as_deref().unwrap_or("")) {
            text.insert(format!("{k}={v}"));
            labels.insert((k.to_string(), v.to_string()));
        }
        for p in p.as_deref().unwrap_or("").split_whitespace() {
            text.insert(p.to_string());
            platforms.insert(p.to_string());
        }
    }
    let mut body = String::new();
    for t in &text {
        if body.len() + t.len() + 1 > MAX_BODY {
            break;
        }
        body.push_str(t);
        body.push('\n');
    }
    tx.execute(
        "INSERT INTO search_docs(rowid, name, tags, body) VALUES (?1, ?2, ?3, ?4)",
        params![id, name, tags.join(" "), body],
    )?;
    let platform_list: Vec<&str> = platforms.iter().map(String::as_str).collect();
    tx.execute(
        "INSERT INTO search_repos(repo_id, name, tags, description, platforms, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![id, name, tags.join(" "), description.or(title), platform_list.join(" "), updated_at],
    )?;
    // The name and every part of it after a `/`: exact and prefix matches
    // of names and their last components are index lookups.
    let mut ins = tx.prepare_cached("INSERT OR IGNORE INTO search_suffixes(suffix, repo_id) VALUES (?1, ?2)")?;
    ins.execute(params![name, id])?;
    for (i, _) in name.match_indices('/') {
        ins.execute(params![&name[i + 1..], id])?;
    }
    let mut ins = tx.prepare_cached("INSERT OR IGNORE INTO search_labels(key, value, repo_id) VALUES (?1, ?2, ?3)")?;
    for (k, v) in &labels {
        ins.execute(params![k, v, id])?;
    }
    let mut ins = tx.prepare_cached("INSERT OR IGNORE INTO search_platforms(platform, repo_id) VALUES (?1, ?2)")?;
    for p in &platforms {
        ins.execute(params![p, id])?;
    }
    Ok(())
}

/// Quotes a term for an FTS5 query: a phrase, which the trigram tokenizer
/// matches as a substring.
fn phrase(t: &str) -> String {
    format!("\"{}\"", t.replace('"', "\"\""))
}

/// Rank of a repository for the main term: 0 exact name (or last path
/// component), 1 prefix of the name or of a component, 2 substring of the
/// name, 3 a tag contains it, 4 it matched other text.
fn rank(name: &str, tags: impl FnOnce() -> String, t: &str) -> u8 {
    if t.is_empty() {
        return 0;
    }
    if name == t || name.strip_suffix(t).is_some_and(|head| head.ends_with('/')) {
        0
    } else if name.starts_with(t) || name.match_indices(t).any(|(i, _)| name[..i].ends_with('/')) {
        1
    } else if name.contains(t) {
        2
    } else if tags().to_lowercase().split_whitespace().any(|tag| tag.contains(t)) {
        3
    } else {
        4
    }
}

/// Matches are counted exactly up to this many. A search with more is
/// "broad": its total is reported as this number with `more` set, and only
/// its first this-many ranked results can be paged through.
pub const COUNT_LIMIT: usize = 1000;
/// In a broad search, full-text matches of the other terms are collected up
/// to this many to check exact and prefix name matches against them.
const OTHER_TERMS_LIMIT: usize = 10_000;

/// One label or platform filter: the matching repositories when there are
/// few, otherwise a per-repository check (an indexed lookup).
enum Filter {
    Ids(HashSet<i64>),
    Label(String, String),
    /// The platform and the range of its variants.
    Platform(String, String, String),
}

/// `linux/arm` also matches `linux/arm/v7`: the range after "linux/arm/".
fn platform_range(p: &str) -> (String, String) {
    (format!("{p}/"), format!("{p}0"))
}

/// The filters of `q`, or `None` when one of them matches nothing.
fn filters(c: &Connection, q: &SearchQuery) -> rusqlite::Result<Option<Vec<Filter>>> {
    let limit = COUNT_LIMIT as i64 + 1;
    let mut out = Vec::new();
    for (k, v) in &q.labels {
        let mut stmt = c.prepare_cached("SELECT repo_id FROM search_labels WHERE key = ?1 AND value = ?2 LIMIT ?3")?;
        let ids = stmt.query_map(params![k, v, limit], |r| r.get(0))?.collect::<rusqlite::Result<HashSet<i64>>>()?;
        out.push(match ids.len() {
            0 => return Ok(None),
            n if n <= COUNT_LIMIT => Filter::Ids(ids),
            _ => Filter::Label(k.clone(), v.clone()),
        });
    }
    for p in &q.platforms {
        let (lo, hi) = platform_range(p);
        let mut stmt = c.prepare_cached(
            "SELECT repo_id FROM search_platforms WHERE platform = ?1 OR (platform > ?2 AND platform < ?3) LIMIT ?4",
        )?;
        let mut ids = HashSet::new();
        let mut rows = stmt.query(params![p, lo, hi, limit * 4])?;
        while let Some(r) = rows.next()? {
            ids.insert(r.get::<_, i64>(0)?);
            if ids.len() > COUNT_LIMIT {
                break;
            }
        }
        out.push(match ids.len() {
            0 => return Ok(None),
            n if n <= COUNT_LIMIT => Filter::Ids(ids),
            _ => Filter::Platform(p.clone(), lo, hi),
        });
    }
    // Set lookups first, the smallest set first.
    out.sort_by_key(|f| match f {
        Filter::Ids(ids) => ids.len(),
        _ => usize::MAX,
    });
    Ok(Some(out))
}

/// A broad label filter matching at most this many repositories is read
/// into a set once per search (~1 MB, a few milliseconds) rather than
/// queried once per candidate.
const LABEL_SET_LIMIT: usize = 20_000;

/// Decides whether one repository matches a query and the caller may see it.
struct Matcher<'a> {
    c: &'a Connection,
    /// Repositories of a broad label filter, read once when candidates are
    /// checked against it (`None`: too many to hold, checked per row).
    label_sets: std::cell::RefCell<std::collections::HashMap<(String, String), Option<HashSet<i64>>>>,
    /// Terms shorter than a trigram, matched against names and tags.
    short: Vec<&'a str>,
    filters: Vec<Filter>,
    allow: &'a RepoFilter,
    main: &'a str,
}

impl Matcher<'_> {
    /// `platforms`: the repository's platforms, space-separated.
    fn filters_hold(&self, id: i64, platforms: &str) -> rusqlite::Result<bool> {
        for f in &self.filters {
            let ok = match f {
                Filter::Ids(ids) => ids.contains(&id),
                Filter::Label(k, v) => {
                    let mut sets = self.label_sets.borrow_mut();
                    let set = match sets.get(&(k.clone(), v.clone())) {
                        Some(set) => set,
                        None => {
                            let mut stmt = self.c.prepare_cached("SELECT repo_id FROM search_labels WHERE key = ?1 AND value = ?2 LIMIT ?3")?;
                            let ids = stmt
                                .query_map(params![k, v, LABEL_SET_LIMIT as i64 + 1], |r| r.get(0))?
                                .collect::<rusqlite::Result<HashSet<i64>>>()?;
                            sets.entry((k.clone(), v.clone())).or_insert((ids.len() <= LABEL_SET_LIMIT).then_some(ids))
                        }
                    };
                    match set {
                        Some(ids) => ids.contains(&id),
                        None => {
                            let mut stmt = self
                                .c
                                .prepare_cached("SELECT 1 FROM search_labels WHERE key = ?1 AND value = ?2 AND repo_id = ?3")?;
                            stmt.exists(params![k, v, id])?
                        }
                    }
                }
                Filter::Platform(p, lo, _) => platforms.split_whitespace().any(|x| x == p || x.starts_with(lo.as_str())),
            };
            if !ok {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Checks the short terms, filters and access of a repository the
    /// full-text terms already matched; returns its rank.
    fn accept(&self, id: i64, name: &str, tags: &str, platforms: &str) -> rusqlite::Result<Option<u8>> {
        let lower = if tags.bytes().any(|b| b.is_ascii_uppercase()) { tags.to_lowercase().into() } else { std::borrow::Cow::Borrowed(tags) };
        if !self.short.iter().all(|t| name.contains(t) || lower.contains(t)) || !self.filters_hold(id, platforms)? || !(self.allow)(name) {
            return Ok(None);
        }
        Ok(Some(rank(name, || tags.to_string(), self.main)))
    }
}

/// A ranked match: rank, the name component the main term prefixes (rank 1
/// only: closer prefix matches first), name, id.
type Ranked = (u8, String, String, i64);

/// The smallest part of `name` starting at a path component that starts
/// with `t`: what orders prefix matches.
fn prefix_key(name: &str, t: &str) -> String {
    std::iter::once(name)
        .chain(name.match_indices('/').map(|(i, _)| &name[i + 1..]))
        .filter(|s| s.starts_with(t))
        .min()
        .unwrap_or("")
        .to_string()
}

fn ranked(rank: u8, name: String, id: i64, main: &str) -> Ranked {
    let key = if rank == 1 { prefix_key(&name, main) } else { String::new() };
    (rank, key, name, id)
}

/// Reads (id, name, tags, platforms) rows, keeping accepted ones until `max`.
fn collect(
    rows: &mut rusqlite::Rows<'_>,
    max: usize,
    out: &mut Vec<(u8, String, i64)>,
    seen: &mut HashSet<i64>,
    m: &Matcher<'_>,
) -> rusqlite::Result<()> {
    while out.len() < max {
        let Some(r) = rows.next()? else { break };
        let id: i64 = r.get(0)?;
        if seen.contains(&id) {
            continue;
        }
        // Borrowed: most rows of a scan are not kept.
        let text = |i: usize| -> rusqlite::Result<&str> {
            Ok(r.get_ref(i)?.as_str_or_null().map_err(|e| rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, e.into()))?.unwrap_or(""))
        };
        let name = text(1)?;
        if let Some(rank) = m.accept(id, name, text(2)?, text(3)?)? {
            seen.insert(id);
            out.push((rank, name.to_string(), id));
        }
    }
    Ok(())
}

/// Exact (rank 0) and prefix (rank 1) name matches of the main term, in
/// ranking order, up to `need`, from the index of name suffixes: exact ones
/// by name, prefix ones by the matched component, then name.
fn name_matches(c: &Connection, m: &Matcher<'_>, others: Option<&HashSet<i64>>, need: usize) -> rusqlite::Result<Vec<Ranked>> {
    let t = m.main;
    let mut out: Vec<Ranked> = Vec::new();
    let mut seen = HashSet::new();
    let mut stmt = c.prepare_cached(
        "SELECT x.suffix, s.repo_id, s.name, s.tags, s.platforms FROM search_suffixes x JOIN search_repos s ON s.repo_id = x.repo_id
         WHERE x.suffix >= ?1 AND x.suffix < ?2 ORDER BY x.suffix, x.repo_id",
    )?;
    let mut rows = stmt.query(params![t, format!("{t}\u{10ffff}")])?;
    // Rows come by suffix; one suffix's repositories are put in name order.
    let mut group: Vec<Ranked> = Vec::new();
    let mut group_key = String::new();
    loop {
        let row = rows.next()?;
        let next_key = match row {
            Some(r) => Some(r.get::<_, String>(0)?),
            None => None,
        };
        if next_key.as_deref() != Some(group_key.as_str()) {
            group.sort_unstable();
            out.append(&mut group);
            // Exact matches all come first, whatever the suffix order.
            if out.len() >= need && !(next_key.as_deref() == Some(t)) {
                break;
            }
        }
        let (Some(r), Some(key)) = (row, next_key) else { break };
        group_key = key;
        let id: i64 = r.get(1)?;
        if !seen.insert(id) || others.is_some_and(|o| !o.contains(&id)) {
            continue;
        }
        let (name, tags, platforms): (String, String, Option<String>) = (r.get(2)?, r.get(3)?, r.get(4)?);
        if let Some(rank) = m.accept(id, &name, &tags, platforms.as_deref().unwrap_or(""))? {
            group.push(ranked(rank, name, id, t));
        }
    }
    out.sort_unstable();
    out.truncate(need);
    Ok(out)
}

pub(crate) fn search(c: &Connection, q: &SearchQuery, allow: &RepoFilter) -> rusqlite::Result<SearchPage> {
    let Some(filters) = filters(c, q)? else { return Ok(SearchPage::default()) };
    let long: Vec<String> = q.terms.iter().filter(|t| t.chars().count() >= 3).map(|t| phrase(t)).collect();
    let m = Matcher {
        c,
        label_sets: Default::default(),
        short: q.terms.iter().filter(|t| t.chars().count() < 3).map(String::as_str).collect(),
        filters,
        allow,
        main: q.terms.first().map(String::as_str).unwrap_or(""),
    };
    let need = q.offset.saturating_add(q.limit);
    let mut found: Vec<(u8, String, i64)> = Vec::new();
    let mut seen = HashSet::new();
    // Matches in index order, at most one more than are counted. The
    // full-text table holds no content: it yields row ids, names come from
    // `search_repos`.
    let max = COUNT_LIMIT + 1;
    if !long.is_empty() {
        let mut stmt = c.prepare_cached(
            "SELECT s.repo_id, s.name, s.tags, s.platforms FROM search_docs JOIN search_repos s ON s.repo_id = search_docs.rowid
             WHERE search_docs MATCH ?1",
        )?;
        collect(&mut stmt.query([long.join(" AND ")])?, max, &mut found, &mut seen, &m)?;
    } else if !q.terms.is_empty() {
        // Only terms shorter than a trigram: names and tags row by row.
        let mut stmt = c.prepare_cached("SELECT repo_id, name, tags, platforms FROM search_repos")?;
        collect(&mut stmt.query([])?, max, &mut found, &mut seen, &m)?;
    } else {
        match m.filters.first() {
            // Everything, in name order: the first matches are the first page.
            None => {
                let mut stmt = c.prepare_cached("SELECT repo_id, name, tags, platforms FROM search_repos ORDER BY name")?;
                collect(&mut stmt.query([])?, max, &mut found, &mut seen, &m)?;
            }
            Some(Filter::Ids(ids)) => {
                let mut stmt = c.prepare_cached("SELECT repo_id, name, tags, platforms FROM search_repos WHERE repo_id = ?1")?;
                for id in ids {
                    collect(&mut stmt.query([id])?, max, &mut found, &mut seen, &m)?;
                }
            }
            Some(Filter::Label(k, v)) => {
                let mut stmt = c.prepare_cached(
                    "SELECT s.repo_id, s.name, s.tags, s.platforms FROM search_labels l JOIN search_repos s ON s.repo_id = l.repo_id
                     WHERE l.key = ?1 AND l.value = ?2",
                )?;
                collect(&mut stmt.query(params![k, v])?, max, &mut found, &mut seen, &m)?;
            }
            Some(Filter::Platform(p, lo, hi)) => {
                let mut stmt = c.prepare_cached(
                    "SELECT s.repo_id, s.name, s.tags, s.platforms FROM search_platforms p JOIN search_repos s ON s.repo_id = p.repo_id
                     WHERE p.platform = ?1 OR (p.platform > ?2 AND p.platform < ?3)",
                )?;
                collect(&mut stmt.query(params![p, lo, hi])?, max, &mut found, &mut seen, &m)?;
            }
        }
    }
    let more = found.len() > COUNT_LIMIT;
    let total = found.len().min(COUNT_LIMIT);
    let mut page: Vec<Ranked> = Vec::new();
    if !more || q.terms.is_empty() {
        // All matches are known (or, without terms, found in name order,
        // which is their ranking): only the page needs ordering.
        found.truncate(COUNT_LIMIT);
        page = found.into_iter().map(|(rank, name, id)| ranked(rank, name, id, m.main)).collect();
        let end = need.min(page.len());
        if q.offset < end {
            page.select_nth_unstable(end - 1);
            page.truncate(end);
        }
        page.sort_unstable();
    } else {
        // A broad search: exact and prefix name matches first, from the
        // index of name suffixes; then substring, tag and text matches,
        // ranked among the first ones found.
        let need = need.min(COUNT_LIMIT);
        let others: Vec<&String> = long.iter().skip(usize::from(m.main.chars().count() >= 3)).collect();
        let others = if others.is_empty() {
            Some(None)
        } else {
            let mut stmt = c.prepare_cached("SELECT rowid FROM search_docs WHERE search_docs MATCH ?1 LIMIT ?2")?;
            let query = others.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" AND ");
            let ids = stmt
                .query_map(params![query, OTHER_TERMS_LIMIT as i64 + 1], |r| r.get(0))?
                .collect::<rusqlite::Result<HashSet<i64>>>()?;
            // Too many to hold: rank among the ones found only.
            (ids.len() <= OTHER_TERMS_LIMIT).then_some(Some(ids))
        };
        if let Some(others) = &others {
            page = name_matches(c, &m, others.as_ref(), need)?;
        }
        if page.len() < need {
            let head: HashSet<i64> = page.iter().map(|r| r.3).collect();
            let mut rest: Vec<Ranked> = found
                .into_iter()
                .filter(|(rank, _, id)| !head.contains(id) && (*rank >= 2 || others.is_none()))
                .map(|(rank, name, id)| ranked(rank, name, id, m.main))
                .collect();
            rest.sort_unstable();
            page.extend(rest);
        }
        page.truncate(need);
    }
    let mut hits = Vec::new();
    let mut stmt = c.prepare_cached(
        "SELECT tags, description, platforms, updated_at FROM search_repos WHERE repo_id = ?1",
    )?;
    for (rank, _, name, id) in page.into_iter().skip(q.offset).take(q.limit) {
        let (tags, description, platforms, updated_at): (String, Option<String>, Option<String>, i64) =
            stmt.query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
        hits.push(SearchHit {
            name,
            description,
            tags: tags.split_whitespace().take(HIT_TAGS).map(str::to_string).collect(),
            platforms: platforms.unwrap_or_default().split_whitespace().map(str::to_string).collect(),
            rank,
            updated_at,
        });
    }
    Ok(SearchPage { total, more, hits })
}

/// Adds `n` synthetic repositories (`{prefix}/t{i % 100}/{word}-{i}`, one
/// tiny layerless manifest tagged `latest` and `v1`, a description, a label and a
/// platform each) to the store at `path` in one transaction: benchmarks of
/// search at scale, with the server stopped. Their config blob is not
/// stored: they are not meant to be pulled.
#[doc(hidden)]
pub fn seed_synthetic(path: &std::path::Path, prefix: &str, n: usize) -> crate::Result<()> {
    let backend = |e: rusqlite::Error| crate::MetaError::Backend(e.to_string());
    drop(crate::SqliteMetadata::open(path)?);
    let mut c = Connection::open(path).map_err(backend)?;
    c.busy_timeout(std::time::Duration::from_secs(10)).map_err(backend)?;
    let tx = c.transaction().map_err(backend)?;
    let words = ["nginx", "redis", "postgres", "python", "node", "golang", "alpine", "busybox", "envoy", "grafana", "app", "lib"];
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    for i in 0..n {
        let name = format!("{prefix}/t{}/{}-{i}", i % 100, words[i % words.len()]);
        tx.execute("INSERT OR IGNORE INTO repositories(name, created_at) VALUES (?1, ?2)", params![name, now]).map_err(backend)?;
        let id: i64 = tx.query_row("SELECT id FROM repositories WHERE name = ?1", [&name], |r| r.get(0)).map_err(backend)?;
        let body = format!(
            "{{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\
             \"config\":{{\"mediaType\":\"application/vnd.oci.empty.v1+json\",\
             \"digest\":\"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a\",\"size\":2}},\
             \"layers\":[],\"annotations\":{{\"seed\":\"{i}\"}}}}"
        );
        let digest = berth_oci::Digest::sha256_of(body.as_bytes()).to_string();
        tx.execute(
            "INSERT OR IGNORE INTO manifests(repo_id, digest, media_type, size, body, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![id, digest, "application/vnd.oci.image.manifest.v1+json", body.len() as i64, body.as_bytes(), now],
        )
        .map_err(backend)?;
        let fields = SearchFields {
            description: Some(format!("The {} service number {i} of team {}", words[(i / 7) % words.len()], i % 100)),
            labels: vec![("org.opencontainers.image.version".into(), format!("1.{}", i % 50))],
            platforms: vec![["linux/amd64", "linux/arm64"][i % 2].to_string()],
            ..Default::default()
        };
        put_fields(&tx, id, &digest, &fields, false).map_err(backend)?;
        for tag in ["latest", "v1"] {
            tx.execute(
                "INSERT OR REPLACE INTO tags(repo_id, name, digest, updated_at) VALUES (?1, ?2, ?3, ?4)",
                params![id, tag, digest, now],
            )
            .map_err(backend)?;
        }
    }
    reindex_dirty(&tx).map_err(backend)?;
    tx.commit().map_err(backend)
}

pub(crate) fn repository_info(c: &Connection, repo: &str) -> rusqlite::Result<Option<RepositoryInfo>> {
    let row: Option<(i64, i64, Option<String>)> = c
        .query_row(
            "SELECT r.id, r.created_at, s.description FROM repositories r
             LEFT JOIN search_repos s ON s.repo_id = r.id
             WHERE r.name = ?1 AND EXISTS (SELECT 1 FROM manifests m WHERE m.repo_id = r.id)",
            [repo],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let Some((id, created_at, description)) = row else { return Ok(None) };
    let mut stmt = c.prepare_cached(
        "SELECT t.name, t.digest, t.updated_at, m.media_type,
                m.size + (SELECT COALESCE(SUM(b.size), 0) FROM blobs b WHERE b.digest IN (
                    SELECT target FROM manifest_refs WHERE repo_id = t.repo_id AND kind = 0 AND (manifest = t.digest
                      OR manifest IN (SELECT target FROM manifest_refs WHERE repo_id = t.repo_id AND manifest = t.digest AND kind = 1)))),
                s.platforms, s.created, COALESCE(p.count, 0), p.last_pull
         FROM tags t
         JOIN manifests m ON m.repo_id = t.repo_id AND m.digest = t.digest
         LEFT JOIN search_manifests s ON s.repo_id = t.repo_id AND s.digest = t.digest
         LEFT JOIN pulls p ON p.repo_id = t.repo_id AND p.digest = t.digest
         WHERE t.repo_id = ?1 ORDER BY t.updated_at DESC, t.name",
    )?;
    let mut rows = stmt.query([id])?;
    let mut tags = Vec::new();
    while let Some(r) = rows.next()? {
        let Ok(digest) = r.get::<_, String>(1)?.parse() else { continue };
        tags.push(TagDetail {
            name: r.get(0)?,
            digest,
            pushed_at: r.get(2)?,
            media_type: r.get(3)?,
            size: r.get::<_, i64>(4)? as u64,
            platforms: r.get::<_, Option<String>>(5)?.unwrap_or_default().split_whitespace().map(str::to_string).collect(),
            created: r.get(6)?,
            pulls: r.get::<_, i64>(7)? as u64,
            last_pull: r.get(8)?,
        });
    }
    Ok(Some(RepositoryInfo { name: repo.to_string(), description, created_at, tags }))
}

pub(crate) fn record_pulls(tx: &Connection, pulls: &[PullCount]) -> rusqlite::Result<()> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO pulls(repo_id, digest, count, last_pull)
         SELECT r.id, ?2, ?3, ?4 FROM repositories r WHERE r.name = ?1
           AND EXISTS (SELECT 1 FROM manifests m WHERE m.repo_id = r.id AND m.digest = ?2)
         ON CONFLICT(repo_id, digest) DO UPDATE SET count = count + excluded.count,
           last_pull = MAX(last_pull, excluded.last_pull)",
    )?;
    for p in pulls {
        stmt.execute(params![p.repo, p.digest, p.count as i64, p.last])?;
    }
    Ok(())
}

pub(crate) fn pulls_of(c: &Connection, repo: &str, digest: &str) -> rusqlite::Result<(u64, Option<i64>)> {
    Ok(c.query_row(
        "SELECT p.count, p.last_pull FROM pulls p JOIN repositories r ON r.id = p.repo_id WHERE r.name = ?1 AND p.digest = ?2",
        params![repo, digest],
        |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)),
    )
    .optional()?
    .unwrap_or((0, None)))
}

#[cfg(test)]
mod tests {
    use crate::{ManifestRecord, MetadataStore, RepoFilter, SearchFields, SearchQuery, SqliteMetadata};
    use berth_oci::{Digest, RepoName, Tag};
    use bytes::Bytes;
    use std::sync::Arc;
    use std::time::Instant;

    fn all() -> RepoFilter {
        Arc::new(|_: &str| true)
    }

    fn query(terms: &[&str]) -> SearchQuery {
        SearchQuery { terms: terms.iter().map(|t| t.to_string()).collect(), limit: 50, ..Default::default() }
    }

    async fn push(db: &SqliteMetadata, repo: &str, tag: &str, fields: SearchFields) -> Digest {
        let body = format!("{repo}:{tag}:{fields:?}").into_bytes();
        let record = ManifestRecord {
            digest: Digest::sha256_of(&body),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            artifact_type: None,
            body: Bytes::from(body),
            subject: None,
            annotations_json: None,
            blobs: vec![],
            children: vec![],
            search: fields,
        };
        let d = record.digest.clone();
        db.put_manifest(&RepoName::parse(repo).unwrap(), record, Some(&Tag::parse(tag).unwrap())).await.unwrap();
        d
    }

    #[tokio::test]
    async fn ranks_filters_and_follows_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteMetadata::open(dir.path().join("m.db")).unwrap();
        push(&db, "web/nginx-proxy", "1", SearchFields::default()).await;
        push(&db, "nginx", "1", SearchFields { platforms: vec!["linux/arm64".into()], ..Default::default() }).await;
        push(&db, "tools/mynginx", "1", SearchFields::default()).await;
        let d = push(
            &db,
            "tools/web",
            "nginx-compat",
            SearchFields {
                description: Some("A small web server".into()),
                labels: vec![("org.opencontainers.image.vendor".into(), "Acme".into())],
                platforms: vec!["linux/amd64".into(), "linux/arm/v7".into()],
                ..Default::default()
            },
        )
        .await;
        let names = |p: crate::SearchPage| p.hits.into_iter().map(|h| h.name).collect::<Vec<_>>();
        let page = db.search(query(&["nginx"]), all()).await.unwrap();
        assert_eq!(page.total, 4);
        assert_eq!(names(page), ["nginx", "web/nginx-proxy", "tools/mynginx", "tools/web"]);
        assert_eq!(names(db.search(query(&["server"]), all()).await.unwrap()), ["tools/web"]);
        let mut q = query(&[]);
        q.labels.push(("org.opencontainers.image.vendor".into(), "Acme".into()));
        assert_eq!(names(db.search(q, all()).await.unwrap()), ["tools/web"]);
        let mut q = query(&[]);
        q.platforms.push("linux/arm".into());
        assert_eq!(names(db.search(q, all()).await.unwrap()), ["tools/web"]);
        let only_tools: RepoFilter = Arc::new(|n: &str| n.starts_with("tools/"));
        let mut q = query(&["nginx"]);
        q.limit = 1;
        q.offset = 1;
        let page = db.search(q, only_tools).await.unwrap();
        assert_eq!((page.total, names(page)), (2, vec!["tools/web".to_string()]));
        // Deleting the tag drops its labels; deleting the manifest drops the repository.
        db.delete_tag(&RepoName::parse("tools/web").unwrap(), &Tag::parse("nginx-compat").unwrap()).await.unwrap();
        assert!(db.search(query(&["server"]), all()).await.unwrap().hits.is_empty());
        db.delete_manifest(&RepoName::parse("tools/web").unwrap(), &d).await.unwrap();
        assert_eq!(db.search(query(&["nginx"]), all()).await.unwrap().total, 3);
        let info = db.repository_info(&RepoName::parse("nginx").unwrap()).await.unwrap().unwrap();
        assert_eq!(info.tags[0].platforms, ["linux/arm64"]);
    }

    /// Writes `n` synthetic repositories straight into a new store:
    /// `team{i % 300}/{word}-service-{i}`, tagged `latest` and `v1`, with a
    /// description, two labels and one platform each.
    fn fill(path: &std::path::Path, n: usize) {
        drop(SqliteMetadata::open(path).unwrap());
        let mut c = rusqlite::Connection::open(path).unwrap();
        c.execute_batch("PRAGMA synchronous=OFF").unwrap();
        let tx = c.transaction().unwrap();
        for i in 0..n {
            let id = i as i64 + 1;
            tx.execute("INSERT INTO repositories(id, name, created_at) VALUES (?1, ?2, 0)", rusqlite::params![id, synthetic(i)]).unwrap();
            let digest = format!("sha256:{:064x}", i);
            tx.execute(
                "INSERT INTO manifests(repo_id, digest, media_type, size, body, created_at) VALUES (?1, ?2, 'x', 2, x'7b7d', 0)",
                rusqlite::params![id, digest],
            )
            .unwrap();
            let fields = SearchFields {
                description: Some(format!("The {} service number {i} of team {}", WORDS[(i / 7) % WORDS.len()], i % 300)),
                labels: vec![
                    ("org.opencontainers.image.version".into(), format!("1.{}", i % 50)),
                    ("tier".into(), if i % 3 == 0 { "gold" } else { "silver" }.into()),
                ],
                platforms: vec![["linux/amd64", "linux/arm64"][i % 2].to_string()],
                ..Default::default()
            };
            super::put_fields(&tx, id, &digest, &fields, false).unwrap();
            for tag in ["latest", "v1"] {
                tx.execute("INSERT INTO tags(repo_id, name, digest, updated_at) VALUES (?1, ?2, ?3, 0)", rusqlite::params![id, tag, digest]).unwrap();
            }
        }
        super::reindex_dirty(&tx).unwrap();
        tx.commit().unwrap();
    }

    const WORDS: [&str; 10] = ["nginx", "redis", "postgres", "python", "node", "golang", "alpine", "busybox", "envoy", "grafana"];

    fn synthetic(i: usize) -> String {
        format!("team{}/{}-service-{i}", i % 300, WORDS[i % WORDS.len()])
    }

    /// More matches than are counted: the total is capped and flagged, exact
    /// and prefix name matches still come first in ranking order, filters
    /// and access hold for every result.
    #[tokio::test]
    async fn broad_searches() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        let n = 8 * super::COUNT_LIMIT;
        fill(&path, n);
        let db = SqliteMetadata::open(&path).unwrap();
        for repo in ["redis", "lib/redis", "redisx"] {
            push(&db, repo, "1", SearchFields::default()).await;
        }
        let mut names: Vec<String> = (0..n).map(synthetic).collect();
        names.extend(["redis", "lib/redis", "redisx"].map(String::from));
        let names_of = |p: &crate::SearchPage| p.hits.iter().map(|h| h.name.clone()).collect::<Vec<_>>();

        // Prefix matches: the whole ranking, computed by brute force.
        let mut expected: Vec<(u8, String, String)> = names
            .iter()
            .map(|name| (super::rank(name, String::new, "redis"), super::prefix_key(name, "redis"), name.clone()))
            .filter(|(rank, _, _)| *rank <= 1)
            .collect();
        expected.sort();
        let expected: Vec<String> = expected.into_iter().map(|e| e.2).collect();
        let page = db.search(query(&["redis"]), all()).await.unwrap();
        assert_eq!((page.total, page.more), (super::COUNT_LIMIT, true));
        assert_eq!(names_of(&page), expected[..50]);
        assert_eq!(&names_of(&page)[..3], ["lib/redis", "redis", "team1/redis-service-1"]);
        let mut q = query(&["redis"]);
        (q.offset, q.limit) = (50, 25);
        assert_eq!(names_of(&db.search(q, all()).await.unwrap()), expected[50..75]);

        // Access is checked on every result.
        let no_plain: RepoFilter = Arc::new(|n: &str| n != "redis" && !n.starts_with("team1/"));
        let page = db.search(query(&["redis"]), no_plain.clone()).await.unwrap();
        let want: Vec<&String> = expected.iter().filter(|n| no_plain(n)).take(50).collect();
        assert_eq!(names_of(&page).iter().collect::<Vec<_>>(), want);

        // Substring matches of a broad term, a short term, filters alone and
        // with a term, everything.
        let page = db.search(query(&["service"]), all()).await.unwrap();
        assert!(page.more && page.hits.len() == 50 && page.hits.iter().all(|h| h.rank == 2));
        assert!(page.hits.windows(2).all(|w| w[0].name < w[1].name));
        let page = db.search(query(&["v1"]), all()).await.unwrap();
        assert!(page.more && page.hits.iter().all(|h| h.rank == 3 && h.tags.contains(&"v1".to_string())));
        let mut q = query(&["service"]);
        q.platforms.push("linux/arm64".into());
        let page = db.search(q, all()).await.unwrap();
        assert!(page.more && page.hits.iter().all(|h| h.platforms == ["linux/arm64"]));
        let mut q = query(&[]);
        q.labels.push(("tier".into(), "silver".into()));
        let page = db.search(q, all()).await.unwrap();
        assert!(page.more && page.hits.len() == 50);
        for h in &page.hits {
            let i: usize = h.name.rsplit('-').next().unwrap().parse().unwrap();
            assert_ne!(i % 3, 0, "{} is not silver", h.name);
        }
        let mut q = query(&[]);
        q.labels.push(("org.opencontainers.image.version".into(), "1.7".into()));
        let page = db.search(q, all()).await.unwrap();
        assert_eq!((page.total, page.more), (n / 50, false));
        let page = db.search(query(&[]), all()).await.unwrap();
        names.sort();
        assert_eq!((page.total, page.more), (super::COUNT_LIMIT, true));
        assert_eq!(names_of(&page), names[..50]);
        // Only the counted results can be paged through.
        let mut q = query(&["service"]);
        q.offset = super::COUNT_LIMIT;
        assert!(db.search(q, all()).await.unwrap().hits.is_empty());
    }

    /// Search latency on 100,000 repositories:
    /// `cargo test -p berth-meta --release -- --ignored --nocapture search_latency`
    #[tokio::test(flavor = "multi_thread")]
    #[ignore]
    async fn search_latency() {
        for n in [1_000usize, 100_000] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("m.db");
            let started = Instant::now();
            fill(&path, n);
            eprintln!("{n} repositories indexed in {:?}", started.elapsed());
            let db = SqliteMetadata::open(&path).unwrap();
            let cases: Vec<(&str, SearchQuery)> = vec![
                ("exact name", query(&["team7/busybox-service-7"])),
                ("rare substring", query(&["service-4242"])),
                ("common word (10%)", query(&["redis"])),
                ("every repository", query(&["service"])),
                ("two terms", query(&["grafana", "team12"])),
                ("short term, rare", query(&["x9"])),
                ("one letter", query(&["a"])),
                ("two letters", query(&["se"])),
                ("short tag", query(&["v1"])),
                ("three letters", query(&["ser"])),
                ("name prefix", query(&["redis-service-1"])),
                ("tag word", query(&["latest"])),
                ("page 3 of broad", SearchQuery { terms: vec!["service".into()], offset: 50, limit: 25, ..Default::default() }),
                ("everything", query(&[])),
                ("broad platform", SearchQuery { platforms: vec!["linux/arm64".into()], limit: 25, ..Default::default() }),
                ("description word", query(&["number 777"])),
                ("label filter", SearchQuery { labels: vec![("org.opencontainers.image.version".into(), "1.7".into())], limit: 25, ..Default::default() }),
                ("platform + term", SearchQuery { terms: vec!["envoy".into()], platforms: vec!["linux/arm64".into()], limit: 25, ..Default::default() }),
            ];
            for (what, q) in cases {
                let mut times = Vec::new();
                let mut total = 0;
                let mut more = "";
                for _ in 0..30 {
                    let t = Instant::now();
                    let page = db.search(q.clone(), all()).await.unwrap();
                    total = page.total;
                    more = if page.more { "+" } else { "" };
                    times.push(t.elapsed());
                }
                times.sort();
                eprintln!("{n:>7} repos  {what:<20} matches {total:>6}{more:<1}  p50 {:>8.2?}  p99 {:>8.2?}", times[15], times[29]);
            }
        }
    }
}

