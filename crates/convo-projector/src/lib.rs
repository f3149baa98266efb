//! # convo-projector
//!
//! Runs a read-model projection from its checkpoint. Commits are read from
//! the stream and folded into staged changes; every batch of up to
//! [`BATCH_COMMITS_MAX`] commits is written to the projection's sled tree
//! together with the new checkpoint, atomically, then flushed: a crash loses
//! at most the batch in hand, never applies a commit twice, and what is
//! acknowledged (the checkpoint) is durable.
//!
//! A commit that cannot be decoded or applied, or that does not follow its
//! aggregate's last folded event (a republished copy, a forgery), goes to the
//! dead letters (with the reason and its sequence) and the projection goes
//! on: every read model holds what the engine applies, nothing else. A rebuild folds
//! the whole stream into a fresh tree and swaps it in when caught up, while
//! queries keep reading the old one.

pub mod follow;

use std::collections::{BTreeMap, HashMap};

use futures::StreamExt;

use convo_store::{EventStore, StoreError, StoredCommit};

/// Commits folded into one atomic write.
pub const BATCH_COMMITS_MAX: usize = 1_000;
/// Commits folded into one write while rebuilding into a fresh tree: no
/// query reads that tree before the swap and a stopped rebuild starts over,
/// so a batch can be larger (fewer, merged writes per counter and head).
pub const REBUILD_BATCH_COMMITS_MAX: usize = 65_536;
/// Bytes of staged changes after which a batch is written whatever its
/// number of commits (large commits keep a batch's memory bounded).
pub const BATCH_BYTES_MAX: usize = 64 * 1024 * 1024;

const CHECKPOINT_KEY: &[u8] = b"\x00checkpoint";
const DEAD_PREFIX: &[u8] = b"\x00dead/";
/// Per aggregate, the sequence of the last event folded.
const SEQ_PREFIX: &[u8] = b"\x00seq/";

/// Aggregates whose last folded event a fold keeps in memory before it forgets them
/// (they are in the tree: the next look reads them back).
pub const HEADS_CACHED_MAX: usize = 1_000_000;

/// Per aggregate, the sequence of its last event folded (`\x00seq/<account>/<stream>`):
/// kept in memory during a fold, staged once per batch for those that moved.
#[derive(Debug, Default)]
struct Heads {
    last: HashMap<Vec<u8>, u64>,
    moved: Vec<Vec<u8>>,
}

impl Heads {
    /// Whether a commit follows its aggregate's last folded event (as the
    /// engine applies it): a republished copy, a forgery at a used sequence
    /// or a commit after a gap is not part of the record, and goes to the
    /// dead letters. The aggregate's key and new head, for [`Heads::advance`].
    fn follows(&mut self, staged: &Staged<'_>, stored: &StoredCommit) -> Result<(Vec<u8>, u64), String> {
        let commit = &stored.commit;
        let mut key = SEQ_PREFIX.to_vec();
        key.extend_from_slice(commit.account.as_str().as_bytes());
        key.push(b'/');
        key.extend_from_slice(commit.stream.path().as_bytes());
        let last = match self.last.get(&key) {
            Some(last) => *last,
            None => staged.get(&key)?.and_then(|v| v.try_into().ok()).map_or(0, u64::from_be_bytes),
        };
        commit.follows(last).map_err(|why| format!("{why} (a copy or a forgery: the engine does not apply it)"))?;
        Ok((key, commit.last_seq()))
    }

    /// The commit was taken: its aggregate's head moves.
    fn advance(&mut self, (key, seq): (Vec<u8>, u64)) {
        if self.last.insert(key.clone(), seq).is_none_or(|old| old != seq) {
            self.moved.push(key);
        }
    }

    /// Stages the heads that moved in this batch (written with it).
    fn stage(&mut self, staged: &mut Staged<'_>) {
        for key in self.moved.drain(..) {
            if let Some(seq) = self.last.get(&key) {
                staged.insert(key, seq.to_be_bytes().to_vec());
            }
        }
        staged.keep();
        if self.last.len() > HEADS_CACHED_MAX {
            self.last.clear();
        }
    }
}

/// A read model: how one commit changes it.
pub trait Projection {
    /// The projection's name (its trees are named after it).
    fn name(&self) -> &'static str;

    /// Folds a commit into `staged` (reads see earlier staged changes). A
    /// projection may also keep the commit's changes in memory when it
    /// returns `Ok` (the commit is then part of the batch) and hand them over
    /// in [`Projection::flush`].
    fn apply(&mut self, staged: &mut Staged<'_>, stored: &StoredCommit) -> Result<(), String>;

    /// Writes what the projection keeps in memory for the batch in hand into
    /// `staged`; called before each batch is written (as one merged write per
    /// key instead of one read-modify-write per event).
    fn flush(&mut self, _staged: &mut Staged<'_>) -> Result<(), String> {
        Ok(())
    }

    /// Forgets what it keeps in memory and has not flushed: a fold starts
    /// (after a failed one, nothing of its unwritten batch may count).
    fn reset(&mut self) {}

    /// The layout of the projection's tree: a tree written in another one is
    /// set aside and the stream folded again from the start ([`Projector::catch_up`]).
    fn layout(&self) -> u32 {
        1
    }
}

impl<P: Projection + ?Sized> Projection for Box<P> {
    fn name(&self) -> &'static str {
        (**self).name()
    }

    fn apply(&mut self, staged: &mut Staged<'_>, stored: &StoredCommit) -> Result<(), String> {
        (**self).apply(staged, stored)
    }

    fn flush(&mut self, staged: &mut Staged<'_>) -> Result<(), String> {
        (**self).flush(staged)
    }

    fn reset(&mut self) {
        (**self).reset()
    }

    fn layout(&self) -> u32 {
        (**self).layout()
    }
}

/// A read model's tree (sled stays behind this crate and the projections).
pub use sled::Tree;

/// A key and its value.
pub type Entry = (Vec<u8>, Vec<u8>);

/// Changes to a tree not written yet: this commit's over this batch's, read
/// through to the tree.
#[derive(Debug)]
pub struct Staged<'t> {
    tree: &'t sled::Tree,
    batch: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    commit: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Bytes staged in the batch (keys and values, counted as they are kept).
    batch_bytes: usize,
}

impl<'t> Staged<'t> {
    fn new(tree: &'t sled::Tree) -> Self {
        Self { tree, batch: BTreeMap::new(), commit: BTreeMap::new(), batch_bytes: 0 }
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, String> {
        match self.commit.get(key).or_else(|| self.batch.get(key)) {
            Some(value) => Ok(value.clone()),
            None => self.tree.get(key).map(|v| v.map(|v| v.to_vec())).map_err(|e| e.to_string()),
        }
    }

    pub fn insert(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.commit.insert(key, Some(value));
    }

    pub fn remove(&mut self, key: Vec<u8>) {
        self.commit.insert(key, None);
    }

    /// Every live key under `prefix`, with staged changes applied.
    pub fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<Entry>, String> {
        let mut out: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        for item in self.tree.scan_prefix(prefix) {
            let (k, v) = item.map_err(|e| e.to_string())?;
            out.insert(k.to_vec(), v.to_vec());
        }
        for layer in [&self.batch, &self.commit] {
            for (k, v) in layer.range(prefix.to_vec()..).take_while(|(k, _)| k.starts_with(prefix)) {
                match v {
                    Some(v) => out.insert(k.clone(), v.clone()),
                    None => out.remove(k),
                };
            }
        }
        Ok(out.into_iter().collect())
    }

    /// The commit went well: its changes join the batch.
    fn keep(&mut self) {
        let commit = std::mem::take(&mut self.commit);
        self.batch_bytes += commit.iter().map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len)).sum::<usize>();
        self.batch.extend(commit);
    }

    /// The commit failed: nothing of it stays.
    fn discard(&mut self) {
        self.commit.clear();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProjectorError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the read-model database failed: {0}")]
    Db(#[from] sled::Error),
    #[error("the projection could not write its batch: {0}")]
    Flush(String),
}

/// What one run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunStats {
    pub commits: u64,
    pub batches: u64,
    pub dead_letters: u64,
    pub checkpoint: u64,
}

/// A projection's trees in one sled database.
#[derive(Debug, Clone)]
pub struct Projector {
    db: sled::Db,
    name: &'static str,
}

/// One dead letter: a commit the projection could not take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub seq: u64,
    pub reason: String,
}

impl Projector {
    pub fn open(db: sled::Db, name: &'static str) -> Self {
        Self { db, name }
    }

    /// Opens (or creates) the read-model database at `path`.
    pub fn open_at(path: &std::path::Path, name: &'static str) -> Result<Self, ProjectorError> {
        Ok(Self::open(open_db(path)?, name))
    }

    fn active_key(&self) -> Vec<u8> {
        format!("active/{}", self.name).into_bytes()
    }

    /// The tree queries read (the live one).
    pub fn tree(&self) -> Result<sled::Tree, ProjectorError> {
        let active = self
            .db
            .get(self.active_key())?
            .map(|v| v.to_vec())
            .unwrap_or_else(|| format!("{}#1", self.name).into_bytes());
        Ok(self.db.open_tree(active)?)
    }

    /// The projection's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The last stream sequence the live tree holds.
    pub fn checkpoint(&self) -> Result<u64, ProjectorError> {
        checkpoint_of(&self.tree()?)
    }

    /// How far the projection is behind the stream.
    pub async fn lag(&self, store: &impl EventStore) -> Result<u64, ProjectorError> {
        Ok(store.last_seq().await?.saturating_sub(self.checkpoint()?))
    }

    /// Folds the stream into the live tree from its checkpoint up to the
    /// stream's current end, in batches of [`BATCH_COMMITS_MAX`]. `on_progress` hears (checkpoint, last).
    pub async fn catch_up(
        &self,
        store: &impl EventStore,
        projection: &mut (dyn Projection + Send),
        on_progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<RunStats, ProjectorError> {
        self.ensure_layout(projection.layout())?;
        fold(store, &self.tree()?, projection, BATCH_COMMITS_MAX, None, on_progress).await
    }

    fn layout_key(&self) -> Vec<u8> {
        format!("layout/{}", self.name).into_bytes()
    }

    /// The layout the live tree is written in (1 for a tree from before layouts were recorded).
    pub fn layout(&self) -> Result<u32, ProjectorError> {
        Ok(self
            .db
            .get(self.layout_key())?
            .and_then(|v| <[u8; 4]>::try_from(v.as_ref()).ok())
            .map_or(1, u32::from_be_bytes))
    }

    /// A live tree of another layout than `layout` is replaced by an empty
    /// one (the next fold starts from the stream's beginning; until it is
    /// caught up the read model says it is behind); a new tree takes it.
    pub fn ensure_layout(&self, layout: u32) -> Result<(), ProjectorError> {
        let tree = self.tree()?;
        if tree.is_empty() {
            self.db.insert(self.layout_key(), &layout.to_be_bytes())?;
            return Ok(());
        }
        if self.layout()? == layout {
            return Ok(());
        }
        let fresh = self.fresh_tree(&tree)?;
        self.make_live(&fresh, layout)?;
        self.db.flush()?;
        self.db.drop_tree(tree.name())?;
        Ok(())
    }

    /// The next generation's tree after `live` (`<name>#<n+1>`), empty.
    fn fresh_tree(&self, live: &sled::Tree) -> Result<sled::Tree, ProjectorError> {
        let generation =
            String::from_utf8_lossy(&live.name()).rsplit('#').next().and_then(|g| g.parse::<u64>().ok()).unwrap_or(1);
        let fresh_name = format!("{}#{}", self.name, generation + 1);
        self.db.drop_tree(fresh_name.as_bytes())?;
        Ok(self.db.open_tree(fresh_name.as_bytes())?)
    }

    /// Makes `fresh` (written in `layout`) the tree queries read; the caller
    /// flushes, then drops the old one.
    fn make_live(&self, fresh: &sled::Tree, layout: u32) -> Result<(), ProjectorError> {
        self.db.insert(self.active_key(), &*fresh.name())?;
        self.db.insert(self.layout_key(), &layout.to_be_bytes())?;
        Ok(())
    }

    /// Folds the whole stream into a fresh tree, then makes it the live one.
    /// Until the swap, queries read the old tree.
    pub async fn rebuild(
        &self,
        store: &impl EventStore,
        projection: &mut (dyn Projection + Send),
        on_progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<RunStats, ProjectorError> {
        let old = self.tree()?;
        let fresh = self.fresh_tree(&old)?;
        // Nobody reads the fresh tree before the swap: its large batches are written in chunks.
        let stats = fold_into(store, &fresh, projection, REBUILD_BATCH_COMMITS_MAX, None, false, on_progress).await?;
        self.make_live(&fresh, projection.layout())?;
        self.db.flush_async().await?;
        self.db.drop_tree(old.name())?;
        Ok(stats)
    }

    /// The dead letters of the live tree, in stream order.
    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>, ProjectorError> {
        dead_letters_of(&self.tree()?)
    }
}

/// Opens (or creates) the read models' database at `path`, for several
/// projectors to share (finishing a compaction a crash interrupted).
pub fn open_db(path: &std::path::Path) -> Result<sled::Db, ProjectorError> {
    finish_compaction(path)?;
    Ok(sled::open(path)?)
}

/// Entries copied per batch when a database is compacted.
pub const COMPACT_BATCH_MAX: usize = 10_000;

/// A compaction: the database's size on disk before and after, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compacted {
    pub before: u64,
    pub after: u64,
}

fn sibling(path: &std::path::Path, suffix: &str) -> std::path::PathBuf {
    let mut name = path.file_name().map(std::ffi::OsStr::to_os_string).unwrap_or_default();
    name.push(suffix);
    path.with_file_name(name)
}

/// The bytes of the files under `path`.
pub fn dir_bytes(path: &std::path::Path) -> std::io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() { dir_bytes(&entry.path())? } else { meta.len() };
    }
    Ok(total)
}

/// Rewrites the read models' database at `path` with only what its trees
/// hold now, then puts the copy in its place. sled reuses the space of a
/// dropped tree (the one a rebuild swapped out) only for later writes and
/// never shrinks its files; the copy holds the live trees alone. Nothing else
/// may hold the database meanwhile. A crash leaves the old database or the
/// copy in place, never neither ([`open_db`] finishes the swap).
pub fn compact(path: &std::path::Path) -> Result<Compacted, ProjectorError> {
    finish_compaction(path)?;
    let before = dir_bytes(path).map_err(io)?;
    let copy = sibling(path, ".compacting");
    if copy.exists() {
        std::fs::remove_dir_all(&copy).map_err(io)?;
    }
    {
        let db = open_released(path)?;
        let fresh = sled::open(&copy)?;
        for name in db.tree_names() {
            let (from, to) = (db.open_tree(&name)?, fresh.open_tree(&name)?);
            let mut batch = sled::Batch::default();
            let mut in_batch = 0;
            for item in from.iter() {
                let (k, v) = item?;
                batch.insert(k, v);
                in_batch += 1;
                if in_batch == COMPACT_BATCH_MAX {
                    to.apply_batch(std::mem::take(&mut batch))?;
                    in_batch = 0;
                }
            }
            to.apply_batch(batch)?;
        }
        fresh.flush()?;
    }
    let old = sibling(path, ".old");
    std::fs::rename(path, &old).map_err(io)?;
    std::fs::rename(&copy, path).map_err(io)?;
    std::fs::remove_dir_all(&old).map_err(io)?;
    Ok(Compacted { before, after: dir_bytes(path).map_err(io)? })
}

/// How long [`compact`] waits for this process's last handle on the
/// database to let it go (sled's flusher thread releases the file lock a
/// moment after the last handle is dropped).
pub const RELEASE_WAIT_MS: u64 = 5_000;

/// Opens the database, waiting (up to [`RELEASE_WAIT_MS`]) while a handle
/// just dropped in this process still holds its lock.
fn open_released(path: &std::path::Path) -> Result<sled::Db, ProjectorError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(RELEASE_WAIT_MS);
    loop {
        match sled::open(path) {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock") && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            other => return Ok(other?),
        }
    }
}

/// After a crash during [`compact`]: the copy, if it was put in place,
/// stands; otherwise the old database does.
fn finish_compaction(path: &std::path::Path) -> Result<(), ProjectorError> {
    let (copy, old) = (sibling(path, ".compacting"), sibling(path, ".old"));
    if !path.exists() && old.exists() {
        std::fs::rename(&old, path).map_err(io)?;
    }
    for leftover in [copy, old] {
        if leftover.exists() {
            std::fs::remove_dir_all(&leftover).map_err(io)?;
        }
    }
    Ok(())
}

fn io(e: std::io::Error) -> ProjectorError {
    ProjectorError::Db(sled::Error::Io(e))
}

/// A tree in a temporary database, gone when dropped (for checks and tests).
pub fn scratch_tree(name: &str) -> Result<sled::Tree, ProjectorError> {
    Ok(sled::Config::new().temporary(true).open()?.open_tree(name)?)
}

/// The last stream sequence a tree holds.
pub fn checkpoint_of(tree: &sled::Tree) -> Result<u64, ProjectorError> {
    Ok(tree.get(CHECKPOINT_KEY)?.and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok()).map_or(0, u64::from_be_bytes))
}

/// Folds commits after the tree's checkpoint up to the stream's end (or
/// `until`), a batch of at most `batch_max` at a time.
pub async fn fold(
    store: &impl EventStore,
    tree: &sled::Tree,
    projection: &mut (dyn Projection + Send),
    batch_max: usize,
    until: Option<u64>,
    on_progress: &mut (dyn FnMut(u64, u64) + Send),
) -> Result<RunStats, ProjectorError> {
    fold_into(store, tree, projection, batch_max, until, true, on_progress).await
}

/// [`fold`], each batch written atomically with its checkpoint (`atomic`),
/// or — into a fresh tree nobody reads before its swap — in chunks ([`write`]).
async fn fold_into(
    store: &impl EventStore,
    tree: &sled::Tree,
    projection: &mut (dyn Projection + Send),
    batch_max: usize,
    until: Option<u64>,
    atomic: bool,
    on_progress: &mut (dyn FnMut(u64, u64) + Send),
) -> Result<RunStats, ProjectorError> {
    let mut stats = RunStats { checkpoint: checkpoint_of(tree)?, ..RunStats::default() };
    let end = store.last_seq().await?;
    let last = until.map_or(end, |u| u.min(end));
    if stats.checkpoint >= last {
        return Ok(stats);
    }
    // A read that ends at the log's current end: deleted messages, the last
    // one included, are never waited for. Read models keep personal values
    // sealed, as the log holds them: readers open them to show them, and an
    // erased contact's key gone leaves nothing readable on disk.
    let mut follow = store.read_as_logged(stats.checkpoint + 1).await?;
    projection.reset();
    let mut staged = Staged::new(tree);
    let mut heads = Heads::default();
    let mut in_batch = 0;
    while stats.checkpoint < last {
        let Some(item) = follow.next().await else { break };
        let seq = match &item {
            Ok(stored) => stored.stream_seq,
            Err(StoreError::Decode { seq, .. }) => *seq,
            Err(_) => 0,
        };
        if seq > last {
            break; // appended after this fold began: the next one takes it (nothing of it applied)
        }
        let outcome = match item {
            Ok(stored) => {
                heads.follows(&staged, &stored).and_then(|head| projection.apply(&mut staged, &stored).map(|()| head))
            }
            Err(StoreError::Decode { subject, error, .. }) => Err(format!("cannot apply {subject}: {error}")),
            Err(e) => return Err(e.into()),
        };
        match outcome {
            Ok(head) => {
                heads.advance(head);
                staged.keep();
                stats.commits += 1;
            }
            Err(reason) => {
                staged.discard();
                let mut key = DEAD_PREFIX.to_vec();
                key.extend_from_slice(format!("{seq:020}").as_bytes());
                staged.insert(key, reason.into_bytes());
                staged.keep();
                stats.dead_letters += 1;
            }
        }
        stats.checkpoint = seq;
        in_batch += 1;
        if in_batch >= batch_max || staged.batch_bytes >= BATCH_BYTES_MAX || stats.checkpoint >= last {
            heads.stage(&mut staged);
            write(tree, &mut staged, projection, stats.checkpoint, atomic).await?;
            stats.batches += 1;
            in_batch = 0;
            on_progress(stats.checkpoint, last);
        }
    }
    if stats.checkpoint < last && until.is_none() {
        // The newest messages were deleted: the fold has covered the log.
        stats.checkpoint = last;
        in_batch += 1;
    }
    if in_batch > 0 {
        heads.stage(&mut staged);
        write(tree, &mut staged, projection, stats.checkpoint, atomic).await?;
        stats.batches += 1;
    }
    Ok(stats)
}

/// Entries per sled batch when a fold into a fresh tree writes its (large)
/// batch: sled applies a batch of a hundred thousand inserts at a third of
/// the speed of the same inserts in batches of a few thousand (BENCHMARKS.md).
pub const FRESH_WRITE_CHUNK_ENTRIES: usize = 4_096;

/// Writes the staged changes (with what the projection holds for the batch)
/// and the checkpoint, durably: in one atomic batch, or — folding into a
/// fresh tree no query reads before its swap (`atomic` false) — in chunks
/// of [`FRESH_WRITE_CHUNK_ENTRIES`], the checkpoint in the last (a fold
/// stopped between them is started over by the next rebuild).
async fn write(
    tree: &sled::Tree,
    staged: &mut Staged<'_>,
    projection: &mut (dyn Projection + Send),
    checkpoint: u64,
    atomic: bool,
) -> Result<(), ProjectorError> {
    if let Err(e) = projection.flush(staged) {
        projection.reset();
        return Err(ProjectorError::Flush(e));
    }
    staged.keep();
    let mut batch = sled::Batch::default();
    let mut in_batch = 0;
    staged.batch_bytes = 0;
    for (k, v) in std::mem::take(&mut staged.batch) {
        match v {
            Some(v) => batch.insert(k, v),
            None => batch.remove(k),
        }
        in_batch += 1;
        if !atomic && in_batch == FRESH_WRITE_CHUNK_ENTRIES {
            tree.apply_batch(std::mem::take(&mut batch))?;
            in_batch = 0;
        }
    }
    batch.insert(CHECKPOINT_KEY, &checkpoint.to_be_bytes());
    tree.apply_batch(batch)?;
    tree.flush_async().await?;
    Ok(())
}

/// The dead letters of a tree, in stream order.
pub fn dead_letters_of(tree: &sled::Tree) -> Result<Vec<DeadLetter>, ProjectorError> {
    let mut out = Vec::new();
    for item in tree.scan_prefix(DEAD_PREFIX) {
        let (k, v) = item?;
        let seq = std::str::from_utf8(&k[DEAD_PREFIX.len()..]).ok().and_then(|s| s.parse().ok()).unwrap_or(0);
        out.push(DeadLetter { seq, reason: String::from_utf8_lossy(&v).into_owned() });
    }
    Ok(out)
}

/// A helper for projections: the JSON view of a value as bytes.
pub fn json_bytes(value: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(value).expect("JSON values serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rebuild swaps a tree out; compacting gives its space back and keeps
    /// every live tree's entries, and a crash mid-swap leaves a whole database.
    #[test]
    fn compacting_keeps_the_live_trees_and_drops_the_dead_ones_space() {
        let dir = std::env::temp_dir().join(format!("convo-compact-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("projections");
        let value = vec![7u8; 600];
        {
            let db = open_db(&path).unwrap();
            for (tree, n) in [("old#1", 20_000u32), ("live#2", 20_000), ("other", 100)] {
                let tree = db.open_tree(tree).unwrap();
                for i in 0..n {
                    tree.insert(i.to_be_bytes(), value.as_slice()).unwrap();
                }
            }
            db.insert(b"active/live", b"live#2".as_slice()).unwrap();
            db.drop_tree(b"old#1").unwrap();
            db.flush().unwrap();
        }
        let compacted = compact(&path).unwrap();
        assert!(compacted.after < compacted.before, "{compacted:?}");
        let db = open_db(&path).unwrap();
        assert_eq!(db.open_tree("live#2").unwrap().len(), 20_000);
        assert_eq!(db.open_tree("other").unwrap().len(), 100);
        assert_eq!(db.get(b"active/live").unwrap().as_deref(), Some(b"live#2".as_slice()));
        assert!(!db.tree_names().iter().any(|n| n.as_ref() == b"old#1"));
        drop(db);
        // A crash after the old database was moved aside and before the copy took its place.
        std::fs::rename(&path, sibling(&path, ".old")).unwrap();
        std::fs::create_dir_all(sibling(&path, ".compacting")).unwrap();
        let db = open_db(&path).unwrap();
        assert_eq!(db.open_tree("live#2").unwrap().len(), 20_000);
        assert!(!sibling(&path, ".old").exists() && !sibling(&path, ".compacting").exists());
        drop(db);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
