//! The engine's signature on every commit, and anchors kept apart from the stream.
//!
//! Whoever can publish to the stream (an operator's NATS account with full
//! rights, or an attacker who has it) could otherwise delete a commit and
//! republish an altered one at the same place; the read models, rebuilt from
//! the stream, would call it the record. So:
//!
//! - **Signatures.** The engine keeps a 256-bit key in its data directory
//!   ([`KEY_FILE`], mode 0600). Every commit it appends carries
//!   [`SIGNATURE_HEADER`]: HMAC-SHA256 over the subject, the encoding version
//!   and the payload. A store opened with the key ([`Signing`]) reads a
//!   message without a valid signature as [`WireError::Unsigned`]: recovery,
//!   every read model and `convo audit verify` put it aside and name it.
//!   Since a commit's payload holds its aggregate's event numbers, a genuine
//!   commit replayed elsewhere fails [`convo_wire::Commit::follows`].
//! - **Anchors.** What signatures cannot show is a commit *removed* from the
//!   tail of an aggregate. The serving engine writes, at least every
//!   [`ANCHOR_EVERY_MS`], where each aggregate it appended to stands (its last
//!   event and the stream sequence of the commit holding it) to
//!   [`ANCHORS_FILE`] in the data directory, outside NATS; each line is
//!   chained to the one before by an HMAC. [`check_anchors`] reads the
//!   stream and names every anchored commit that is gone or moved.
//!
//! A stream that existed before its key was made keeps its older commits
//! unsigned: the key file records, per stream, the last sequence it does not vouch for.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use futures::StreamExt;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use convo_wire::{Commit, WireError};

use crate::{EventStore, StoreError};

/// The engine's key, in the data directory.
pub const KEY_FILE: &str = "engine.key";
/// The record of the stream's rewrites into a sealed one, in the data directory.
pub const RESEALS_FILE: &str = "reseals.jsonl";
/// The anchors, in the data directory.
pub const ANCHORS_FILE: &str = "anchors.jsonl";
/// The header holding a commit's signature (hex).
pub const SIGNATURE_HEADER: &str = "Convo-Signature";
/// Anchors are written at least this often while commits are appended.
pub const ANCHOR_EVERY_MS: u64 = 1_000;
/// Aggregates waiting to be anchored before a write is forced.
pub const ANCHOR_PENDING_MAX: usize = 4_096;
/// The longest anchors line read back (a longer one is reported as damaged).
pub const ANCHOR_LINE_BYTES_MAX: usize = 4_096;
/// The most anchor-check findings reported (the count says how many more).
pub const FINDINGS_MAX: usize = 1_000;

type HmacSha256 = Hmac<Sha256>;

/// Why the key or the anchors could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a convo engine key: {reason}")]
    Malformed { path: PathBuf, reason: String },
    #[error(transparent)]
    Private(#[from] crate::private::PrivateError),
}

/// What the key file holds, for the messages about it.
const KEY_WHAT: &str = "the engine's signing key";

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SigningError + '_ {
    move |source| SigningError::Io { path: path.to_path_buf(), source }
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

/// The key of one stream: signs appends, checks reads, and (for the serving
/// engine) anchors what it appended. Its `Debug` never shows the key.
pub struct Signing {
    key: [u8; 32],
    /// The masters of the stream's data keys, oldest first: the last wraps,
    /// the others (a rotation not yet finished) only open.
    masters: Vec<[u8; 32]>,
    stream: String,
    unsigned_through: u64,
    anchors_path: PathBuf,
    anchors: Option<Anchors>,
}

impl std::fmt::Debug for Signing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signing")
            .field("stream", &self.stream)
            .field("unsigned_through", &self.unsigned_through)
            .field("anchors", &self.anchors_path)
            .field("anchoring", &self.anchors.is_some())
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Anchors {
    /// Where each aggregate appended to since the last write stands:
    /// (account, aggregate) → (its last event, the stream sequence).
    pending: Mutex<BTreeMap<(String, String), (u64, u64)>>,
    /// The chain's last MAC; held by the one writer while it writes, so
    /// appends noting their place never wait for the file.
    chain: Mutex<String>,
}

impl Signing {
    /// The key under `dir` for `stream`, made (mode 0600) if there is none;
    /// a stream the key has not seen is recorded with `stream_last_seq`, the
    /// last sequence it does not vouch for. For the engine that appends.
    pub fn open_or_create(dir: &Path, stream: &str, stream_last_seq: u64) -> Result<(Self, bool), SigningError> {
        let path = dir.join(KEY_FILE);
        if path.exists() {
            crate::private::check_private(&path, KEY_WHAT)?;
        }
        let (mut file, made) = match std::fs::read_to_string(&path) {
            Ok(text) => (parse_key_file(&path, &text)?, false),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                getrandom::getrandom(&mut key).map_err(|e| SigningError::Malformed {
                    path: path.clone(),
                    reason: format!("no randomness for a key: {e}"),
                })?;
                (json!({"key": hex(&key), "streams": {}}), true)
            }
            Err(e) => return Err(io(&path)(e)),
        };
        if file["streams"].get(stream).is_none() {
            file["streams"][stream] = json!({"unsigned_through": stream_last_seq});
            write_key_file(dir, &file)?;
        }
        let mut signing = Self::from_file(dir, &path, &file, stream)?.expect("the stream was just recorded");
        signing.anchors = Some(Anchors {
            pending: Mutex::new(BTreeMap::new()),
            chain: Mutex::new(last_anchor_mac(&signing.anchors_path)?),
        });
        Ok((signing, made))
    }

    /// The key under `dir` for `stream`, if the key exists and has seen the
    /// stream; for readers (they check, and never anchor).
    pub fn open(dir: &Path, stream: &str) -> Result<Option<Self>, SigningError> {
        let path = dir.join(KEY_FILE);
        if path.exists() {
            crate::private::check_private(&path, KEY_WHAT)?;
        }
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::from_file(dir, &path, &parse_key_file(&path, &text)?, stream),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    }

    fn from_file(dir: &Path, path: &Path, file: &Value, stream: &str) -> Result<Option<Self>, SigningError> {
        let Some(entry) = file["streams"].get(stream) else { return Ok(None) };
        let bad = |reason: &str| SigningError::Malformed { path: path.to_path_buf(), reason: reason.to_owned() };
        let key = file["key"].as_str().and_then(unhex).ok_or_else(|| bad("no hex key"))?;
        let key: [u8; 32] = key.try_into().map_err(|_| bad("the key is not 32 bytes"))?;
        let unsigned_through =
            entry["unsigned_through"].as_u64().ok_or_else(|| bad("a stream without unsigned_through"))?;
        let derived = derive(&key, DERIVED_MASTER);
        let masters = match entry.get("data_masters").and_then(Value::as_array) {
            None => vec![derived],
            Some(list) if list.is_empty() => return Err(bad("a stream with no data-key master")),
            Some(list) => list
                .iter()
                .map(|m| match (m["derived"].as_bool(), m["key"].as_str().and_then(unhex)) {
                    (Some(true), _) => Ok(derived),
                    (_, Some(bytes)) => bytes.try_into().map_err(|_| bad("a data-key master is not 32 bytes")),
                    _ => Err(bad("a data-key master with neither \"derived\" nor a hex \"key\"")),
                })
                .collect::<Result<_, _>>()?,
        };
        Ok(Some(Self {
            key,
            masters,
            stream: stream.to_owned(),
            unsigned_through,
            anchors_path: dir.join(ANCHORS_FILE),
            anchors: None,
        }))
    }

    /// A key for `purpose` derived from the engine's (HMAC-SHA256), so one
    /// key file serves every use without one use's key opening another's.
    pub fn derive_key(&self, purpose: &str) -> [u8; 32] {
        derive(&self.key, purpose)
    }

    /// The master key that wraps the data keys of personal data (see
    /// [`crate::keys`]): derived from the engine's key until the first
    /// rotation, then the key file's newest.
    pub fn data_key_master(&self) -> [u8; 32] {
        *self.masters.last().expect("a stream has a data-key master")
    }

    /// The older masters a rotation not yet finished still needs to open
    /// keys it has not wrapped again (none once it is finished).
    pub fn retired_data_key_masters(&self) -> Vec<[u8; 32]> {
        self.masters[..self.masters.len() - 1].to_vec()
    }

    /// Starts a rotation of the data-key master of this key's stream under
    /// `dir`: a new random master is added to the key file (the wrapping
    /// one from now on) beside the older ones, which still open what is not
    /// wrapped again yet. Returns the key as read back.
    pub fn begin_master_rotation(&self, dir: &Path) -> Result<Self, SigningError> {
        let mut file = read_key_file(dir)?;
        let path = dir.join(KEY_FILE);
        let mut fresh = [0u8; 32];
        getrandom::getrandom(&mut fresh).map_err(|e| SigningError::Malformed {
            path: path.clone(),
            reason: format!("no randomness for a key: {e}"),
        })?;
        let entry = &mut file["streams"][&self.stream];
        let mut list = entry
            .get("data_masters")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_else(|| vec![json!({"generation": 0, "derived": true})]);
        let generation = list.iter().filter_map(|m| m["generation"].as_u64()).max().unwrap_or(0) + 1;
        list.push(json!({"generation": generation, "key": hex(&fresh)}));
        entry["data_masters"] = Value::Array(list);
        write_key_file(dir, &file)?;
        Self::open(dir, &self.stream)?
            .ok_or_else(|| SigningError::Malformed { path, reason: "the stream is gone".into() })
    }

    /// Finishes a rotation: the key file keeps only the newest master (every
    /// data key is wrapped by it now). Returns the key as read back.
    pub fn finish_master_rotation(&self, dir: &Path) -> Result<Self, SigningError> {
        let mut file = read_key_file(dir)?;
        let path = dir.join(KEY_FILE);
        let entry = &mut file["streams"][&self.stream];
        if let Some(newest) = entry.get("data_masters").and_then(Value::as_array).and_then(|l| l.last()).cloned() {
            entry["data_masters"] = Value::Array(vec![newest]);
            write_key_file(dir, &file)?;
        }
        Self::open(dir, &self.stream)?
            .ok_or_else(|| SigningError::Malformed { path, reason: "the stream is gone".into() })
    }

    /// The data-key master's generation (0: derived from the engine's key),
    /// and how many older ones a rotation not yet finished keeps.
    pub fn master_generation(dir: &Path, stream: &str) -> Result<(u64, usize), SigningError> {
        let file = read_key_file(dir)?;
        let list = file["streams"][stream].get("data_masters").and_then(Value::as_array).cloned().unwrap_or_default();
        let generation = list.last().and_then(|m| m["generation"].as_u64()).unwrap_or(0);
        Ok((generation, list.len().saturating_sub(1)))
    }

    /// The sealer of secrets kept at rest (webhook secrets: in the stream and
    /// in the webhooks database).
    pub fn sealer(&self) -> crate::seal::Sealer {
        crate::seal::Sealer::new(self.derive_key("secrets-at-rest-v1"))
    }

    /// The last stream sequence the key does not vouch for (0: it vouches for all).
    pub fn unsigned_through(&self) -> u64 {
        self.unsigned_through
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.key).expect("HMAC takes keys of any length")
    }

    /// The signature of a commit message.
    pub fn sign(&self, subject: &str, version: &str, payload: &[u8]) -> String {
        let mut mac = self.mac();
        for part in [b"convo-commit-v1".as_slice(), subject.as_bytes(), version.as_bytes(), payload] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        hex(&mac.finalize().into_bytes())
    }

    /// Whether the message at `seq` carries this key's signature (messages
    /// the key does not vouch for pass unchecked).
    pub fn check(
        &self,
        seq: u64,
        subject: &str,
        version: Option<&str>,
        payload: &[u8],
        signature: Option<&str>,
    ) -> Result<(), WireError> {
        if seq <= self.unsigned_through {
            return Ok(());
        }
        let Some(signature) = signature else {
            return Err(WireError::Unsigned("it carries no signature".into()));
        };
        let expected = self.sign(subject, version.unwrap_or(""), payload);
        let given = unhex(signature).unwrap_or_default();
        let expected = unhex(&expected).unwrap_or_default();
        if subtle::ConstantTimeEq::ct_eq(given.as_slice(), expected.as_slice()).into() {
            Ok(())
        } else {
            Err(WireError::Unsigned("its signature does not match its content".into()))
        }
    }

    /// Notes where an aggregate stands after an append (the serving engine
    /// only). The anchors are written by [`Signing::flush`], which the
    /// serving engine calls every [`ANCHOR_EVERY_MS`] off the append path;
    /// only when [`ANCHOR_PENDING_MAX`] aggregates wait does an append write
    /// them itself.
    pub fn anchor(&self, commit: &Commit, stream_seq: u64) -> Result<(), SigningError> {
        let Some(anchors) = &self.anchors else { return Ok(()) };
        let full = {
            let mut pending = anchors.pending.lock().expect("not poisoned");
            let entry = pending.entry((commit.account.to_string(), commit.stream.path())).or_insert((0, 0));
            if commit.last_seq() > entry.0 {
                *entry = (commit.last_seq(), stream_seq);
            }
            pending.len() >= ANCHOR_PENDING_MAX
        };
        if full { self.flush() } else { Ok(()) }
    }

    /// Writes the anchors noted since the last write (on the serving
    /// engine's timer, when too many wait, and at shutdown). The chain moves
    /// on only once they are on disk; what a failed write held waits for the
    /// next one.
    pub fn flush(&self) -> Result<(), SigningError> {
        let Some(anchors) = &self.anchors else { return Ok(()) };
        let mut chain = anchors.chain.lock().expect("not poisoned");
        let pending = std::mem::take(&mut *anchors.pending.lock().expect("not poisoned"));
        if pending.is_empty() {
            return Ok(());
        }
        match self.write(&chain, &pending) {
            Ok(last) => {
                *chain = last;
                Ok(())
            }
            Err(e) => {
                let mut waiting = anchors.pending.lock().expect("not poisoned");
                for (key, place) in pending {
                    let entry = waiting.entry(key).or_insert(place);
                    if place.0 > entry.0 {
                        *entry = place;
                    }
                }
                Err(e)
            }
        }
    }

    /// Appends `pending` as anchor lines chained from `prev`, and syncs
    /// them; the last line's MAC.
    fn write(&self, prev: &str, pending: &BTreeMap<(String, String), (u64, u64)>) -> Result<String, SigningError> {
        let path = &self.anchors_path;
        let mut file = std::fs::OpenOptions::new().create(true).append(true).read(true).open(path).map_err(io(path))?;
        // A line cut short by a crash is ended first, so it stays one damaged line.
        let mut out = String::new();
        let len = file.metadata().map_err(io(path))?.len();
        if len > 0 {
            use std::io::{Read, Seek, SeekFrom};
            let mut last = [0u8; 1];
            file.seek(SeekFrom::Start(len - 1)).and_then(|_| file.read_exact(&mut last)).map_err(io(path))?;
            if last[0] != b'\n' {
                out.push('\n');
            }
        }
        let mut prev = prev.to_owned();
        for ((account, aggregate), (event, seq)) in pending {
            let body =
                json!({"stream": self.stream, "account": account, "aggregate": aggregate, "event": event, "seq": seq});
            let mac = self.line_mac(&prev, &body);
            let mut line = body;
            line["mac"] = Value::String(mac.clone());
            out.push_str(&line.to_string());
            out.push('\n');
            prev = mac;
        }
        file.write_all(out.as_bytes()).map_err(io(path))?;
        // On disk before the chain moves on, as the commits it anchors are (sync_interval: always).
        file.sync_data().map_err(io(path))?;
        Ok(prev)
    }

    /// Appends `body` (a rewrite of the stream into a sealed one, `convo
    /// seal-stream`) to [`RESEALS_FILE`] in `dir`, chained to the line
    /// before it by an HMAC as the anchors are, and synced: the line written.
    pub fn record_reseal(&self, dir: &Path, mut body: Value) -> Result<Value, SigningError> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = dir.join(RESEALS_FILE);
        let prev = last_anchor_mac(&path)?;
        body["stream"] = Value::String(self.stream.clone());
        let mac = self.line_mac(&prev, &body);
        body["mac"] = Value::String(mac);
        let mut file =
            std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(&path).map_err(io(&path))?;
        file.write_all(format!("{body}\n").as_bytes()).map_err(io(&path))?;
        file.sync_data().map_err(io(&path))?;
        Ok(body)
    }

    fn line_mac(&self, prev: &str, body: &Value) -> String {
        let mut mac = self.mac();
        mac.update(b"convo-anchor-v1");
        mac.update(prev.as_bytes());
        mac.update(body.to_string().as_bytes());
        hex(&mac.finalize().into_bytes())
    }
}

/// Writes the key file under `dir`: beside it, synced, then renamed over
/// it, so a crash never leaves half a key.
fn write_key_file(dir: &Path, file: &Value) -> Result<(), SigningError> {
    let path = dir.join(KEY_FILE);
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let temp = dir.join(format!("{KEY_FILE}.{}.tmp", std::process::id()));
    crate::launcher::write_private(&temp, format!("{file:#}\n").as_bytes())
        .map_err(|e| SigningError::Malformed { path: temp.clone(), reason: e.to_string() })?;
    std::fs::File::open(&temp).and_then(|f| f.sync_all()).map_err(io(&temp))?;
    std::fs::rename(&temp, &path).map_err(io(&path))?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// The key file under `dir`, read (it must exist and be ours alone).
fn read_key_file(dir: &Path) -> Result<Value, SigningError> {
    let path = dir.join(KEY_FILE);
    crate::private::check_private(&path, KEY_WHAT)?;
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    parse_key_file(&path, &text)
}

/// A key for `purpose` derived from `key` (HMAC-SHA256).
fn derive(key: &[u8; 32], purpose: &str) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(b"convo-derive-v1");
    mac.update(purpose.as_bytes());
    mac.finalize().into_bytes().into()
}

/// The data-key master derived from the engine's key (generation 0: every
/// stream's until its first rotation).
const DERIVED_MASTER: &str = "personal-data-keys-v1";

fn parse_key_file(path: &Path, text: &str) -> Result<Value, SigningError> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| SigningError::Malformed { path: path.to_path_buf(), reason: e.to_string() })?;
    if !value["streams"].is_object() {
        return Err(SigningError::Malformed { path: path.to_path_buf(), reason: "no \"streams\" object".into() });
    }
    Ok(value)
}

/// The MAC of the last line of the anchors file ("" when there is none).
fn last_anchor_mac(path: &Path) -> Result<String, SigningError> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
        Err(e) => return Err(io(path)(e)),
    };
    let mut last = String::new();
    for line in std::io::BufReader::new(file).lines() {
        let line = line.map_err(io(path))?;
        if let Ok(value) = serde_json::from_str::<Value>(&line)
            && let Some(mac) = value["mac"].as_str()
        {
            last = mac.to_owned();
        }
    }
    Ok(last)
}

/// What [`check_anchors`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AnchorCheck {
    /// Anchors of this stream read (the latest per aggregate counts).
    pub anchors: u64,
    /// Aggregates whose anchored commit was found where it was anchored.
    pub held: u64,
    /// What does not hold, one sentence each (at most [`FINDINGS_MAX`]).
    pub findings: Vec<String>,
    /// Findings beyond [`FINDINGS_MAX`].
    pub more: u64,
}

impl AnchorCheck {
    fn find(&mut self, finding: String) {
        if self.findings.len() < FINDINGS_MAX {
            self.findings.push(finding);
        } else {
            self.more += 1;
        }
    }
}

/// Reads the anchors (checking their chain) and the stream, and names every
/// anchored commit that the stream's record no longer holds where it was.
pub async fn check_anchors(store: &impl EventStore, signing: &Signing) -> Result<AnchorCheck, StoreError> {
    let mut check = AnchorCheck::default();
    let mut anchored: HashMap<(String, String), (u64, u64)> = HashMap::new();
    if let Ok(file) = std::fs::File::open(&signing.anchors_path) {
        let mut prev = String::new();
        let mut chain_ok = true;
        for (number, line) in std::io::BufReader::new(file).lines().enumerate() {
            let line = line.map_err(|e| StoreError::Unavailable(e.to_string()))?;
            let value = (line.len() <= ANCHOR_LINE_BYTES_MAX).then(|| serde_json::from_str::<Value>(&line).ok());
            let Some(Some(mut value)) = value else {
                check.find(format!("anchors line {} is damaged", number + 1));
                chain_ok = false;
                continue;
            };
            let mac = value.as_object_mut().and_then(|o| o.remove("mac"));
            let mac = mac.as_ref().and_then(Value::as_str).unwrap_or("");
            if chain_ok && signing.line_mac(&prev, &value) != mac {
                check.find(format!(
                    "anchors line {} does not follow the line before it (the anchors file was edited)",
                    number + 1
                ));
                chain_ok = false;
            }
            prev = mac.to_owned();
            if value["stream"] != signing.stream.as_str() {
                continue;
            }
            let (Some(account), Some(path), Some(event), Some(seq)) = (
                value["account"].as_str(),
                value["aggregate"].as_str(),
                value["event"].as_u64(),
                value["seq"].as_u64(),
            ) else {
                continue;
            };
            check.anchors += 1;
            let entry = anchored.entry((account.to_owned(), path.to_owned())).or_insert((0, 0));
            if event > entry.0 {
                *entry = (event, seq);
            }
        }
    }
    // Walk the record: signed, in-sequence commits only (as every read model does).
    let mut last: HashMap<(String, String), u64> = HashMap::new();
    let mut log = store.read(1).await?;
    while let Some(item) = log.next().await {
        let stored = match item {
            Ok(stored) => stored,
            Err(StoreError::Decode { .. }) => continue,
            Err(e) => return Err(e),
        };
        let commit = &stored.commit;
        let key = (commit.account.to_string(), commit.stream.path());
        let at = last.get(&key).copied().unwrap_or(0);
        if commit.follows(at).is_err() {
            continue;
        }
        last.insert(key.clone(), commit.last_seq());
        if let Some(&(event, seq)) = anchored.get(&key)
            && (commit.first_seq()..=commit.last_seq()).contains(&event)
        {
            if event == commit.last_seq() && seq == stored.stream_seq {
                check.held += 1;
            } else {
                check.find(format!(
                    "account {}, {}: the commit holding event {event} was anchored at stream sequence {seq}, \
                     but the record has it at {} (removed and put back)",
                    key.0, key.1, stored.stream_seq
                ));
            }
        }
    }
    let mut gone: Vec<_> = anchored
        .iter()
        .filter(|(key, (event, _))| last.get(*key).copied().unwrap_or(0) < *event)
        .map(|(key, (event, seq))| (key.clone(), *event, *seq, last.get(key).copied().unwrap_or(0)))
        .collect();
    gone.sort();
    for ((account, path), event, seq, reached) in gone {
        check.find(format!(
            "account {account}, {path}: the commit holding event {event} (stream sequence {seq}) is anchored, \
             but the record of {path} ends at event {reached}: commits were removed"
        ));
    }
    Ok(check)
}
