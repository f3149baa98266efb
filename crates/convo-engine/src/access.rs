//! The front door's rules (SPEC §9): who a bearer credential is, and what
//! that principal may ask of an account. Both transports (HTTP, NATS) hand
//! their requests here with the credential and the address the connection
//! came from; the actor of every command is derived from them, never from the
//! body.
//!
//! Credentials:
//! - an **API key** of an account, `convo-key.<account>.<key>.<secret>`:
//!   the account and key id are public, the secret is 256 random bits; the
//!   account's catalog keeps only the secret's SHA-256 (compared in constant
//!   time). A user's key acts with the user's role; an integration's within
//!   its scopes.
//! - the **platform operator's** credential, `convo-operator.<secret>`, made
//!   at the first start and kept in the data directory (mode 0600); the engine
//!   knows only its hash. The only principal that creates accounts.
//! - optionally a **JWT** (HS256) from an external identity provider, checked
//!   against a configured key, issuer and audience; its claims name the
//!   account, the user (`sub`) and the role, which must be the user's role in
//!   the account.
//!
//! A refusal is [`Denied`]: `unauthenticated` (HTTP 401) when the credential
//! is missing or not valid, `forbidden` (403) with the rule when a valid
//! principal may not do what it asked.

use std::net::IpAddr;

use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use convo_domain::config::{KeyHolder, Role, Scopes, UNREDACTED};
use convo_domain::{AccountId, Actor, Catalog, IntegrationId, KeyId, UserId};

/// The prefix of an account's API key.
pub const KEY_PREFIX: &str = "convo-key";
/// The prefix of the platform operator's credential.
pub const OPERATOR_PREFIX: &str = "convo-operator";
/// The longest credential accepted, in bytes (a JWT with a few claims is well under).
pub const CREDENTIAL_BYTES_MAX: usize = 4096;
/// How many bytes of randomness a secret holds.
pub const SECRET_BYTES: usize = 32;

/// Why a request may not go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// No credential, or one that is not valid (HTTP 401).
    #[error("{0}")]
    Unauthenticated(String),
    /// A valid principal that may not do this (HTTP 403); `rule` names why.
    #[error("{message}")]
    Forbidden { rule: &'static str, message: String },
}

impl Denied {
    fn forbidden(rule: &'static str, message: impl Into<String>) -> Self {
        Denied::Forbidden { rule, message: message.into() }
    }

    /// The reply's `code`: `unauthenticated` or `forbidden`.
    pub fn code(&self) -> &'static str {
        match self {
            Denied::Unauthenticated(_) => "unauthenticated",
            Denied::Forbidden { .. } => "forbidden",
        }
    }

    /// The rule a refusal names (`credential` when there is none to name).
    pub fn rule(&self) -> &'static str {
        match self {
            Denied::Unauthenticated(_) => "credential",
            Denied::Forbidden { rule, .. } => rule,
        }
    }

    pub fn to_json(&self) -> Value {
        crate::reply::Reply::Error {
            code: self.code().into(),
            message: self.to_string(),
            field: None,
            rule: Some(self.rule().into()),
        }
        .to_json()
    }
}

/// A bearer credential, parsed but not yet checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    Key { account: AccountId, key: KeyId, secret: String },
    Operator { secret: String },
    Jwt(String),
}

impl Credential {
    /// Parses an `Authorization` header value (`Bearer <token>`) or a bare token.
    pub fn parse(header: &str) -> Result<Self, Denied> {
        let bad = |why: &str| Denied::Unauthenticated(format!("the credential is not valid: {why}"));
        if header.len() > CREDENTIAL_BYTES_MAX {
            return Err(bad(&format!("longer than {CREDENTIAL_BYTES_MAX} bytes")));
        }
        let token = header.trim();
        let token = token.strip_prefix("Bearer ").or_else(|| token.strip_prefix("bearer ")).unwrap_or(token).trim();
        if let Some(rest) = token.strip_prefix(&format!("{KEY_PREFIX}.")) {
            let parts: Vec<&str> = rest.split('.').collect();
            let [account, key, secret] = parts[..] else {
                return Err(bad("an API key is convo-key.<account>.<key>.<secret>"));
            };
            let account = AccountId::new(account).map_err(|e| bad(&e.to_string()))?;
            let key = KeyId::new(key).map_err(|e| bad(&e.to_string()))?;
            return Ok(Credential::Key { account, key, secret: secret.to_owned() });
        }
        if let Some(secret) = token.strip_prefix(&format!("{OPERATOR_PREFIX}.")) {
            return Ok(Credential::Operator { secret: secret.to_owned() });
        }
        if token.starts_with("eyJ") && token.split('.').count() == 3 {
            return Ok(Credential::Jwt(token.to_owned()));
        }
        Err(bad("expected an API key (convo-key.…), the operator's credential (convo-operator.…) or a JWT"))
    }
}

/// Who is acting, once the credential checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Operator,
    /// A user; `unredacted` when their key carries the `unredacted` read scope.
    User {
        account: AccountId,
        id: UserId,
        role: Role,
        unredacted: bool,
    },
    Integration {
        account: AccountId,
        id: IntegrationId,
        scopes: Scopes,
    },
}

impl Principal {
    /// The actor of the principal's commands, acting from `ip`.
    pub fn actor(&self, ip: Option<IpAddr>) -> Actor {
        match self {
            Principal::Operator => Actor::Operator { ip },
            Principal::User { id, .. } => Actor::User { id: id.clone(), ip },
            Principal::Integration { id, .. } => Actor::Integration { id: id.clone(), ip },
        }
    }

    /// How the principal is named in a denied attempt.
    pub fn name(&self) -> String {
        match self {
            Principal::Operator => "operator".into(),
            Principal::User { id, .. } => format!("user:{id}"),
            Principal::Integration { id, .. } => format!("integration:{id}"),
        }
    }
}

/// The shortest HS256 key accepted, in bytes (RFC 7518 §3.2: a key of the
/// hash's size or more; a short or empty key lets anyone mint tokens).
pub const JWT_KEY_BYTES_MIN: usize = 32;

/// An external identity provider's tokens (HS256). Made only with a key of
/// at least [`JWT_KEY_BYTES_MIN`] bytes and a non-empty issuer and audience.
#[derive(Clone)]
pub struct JwtConfig {
    key: Vec<u8>,
    pub issuer: String,
    pub audience: String,
}

impl JwtConfig {
    /// The settings, or why they would open a door.
    pub fn new(key: Vec<u8>, issuer: &str, audience: &str) -> Result<Self, String> {
        if key.len() < JWT_KEY_BYTES_MIN {
            return Err(format!("an HS256 key of {} bytes; at least {JWT_KEY_BYTES_MIN} are needed", key.len()));
        }
        if issuer.trim().is_empty() || audience.trim().is_empty() {
            return Err("a JWT issuer and audience are needed (--jwt-issuer, --jwt-audience)".into());
        }
        Ok(Self { key, issuer: issuer.to_owned(), audience: audience.to_owned() })
    }

    fn key(&self) -> &[u8] {
        &self.key
    }
}

impl std::fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtConfig").field("issuer", &self.issuer).field("audience", &self.audience).finish()
    }
}

/// What the front door knows besides the catalogs.
#[derive(Debug, Clone, Default)]
pub struct AccessConfig {
    /// SHA-256 of the platform operator's secret (none: no operator credential works).
    pub operator_sha256: Option<[u8; 32]>,
    pub jwt: Option<JwtConfig>,
    /// Seals the webhook secrets a command carries before it is decided, so
    /// the stream never holds them in clear (none: kept as sent).
    pub sealer: Option<convo_store::seal::Sealer>,
    /// The private hosts the operator lets webhooks reach: a webhook URL
    /// naming any other private address is refused when it is defined.
    pub webhook_allowed: convo_store::egress::Allowed,
}

/// SHA-256 of a secret.
pub fn sha256(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

pub use convo_store::signing::hex;

/// A fresh secret: [`SECRET_BYTES`] from the operating system, in hex.
pub fn new_secret() -> Result<String, String> {
    let mut bytes = [0u8; SECRET_BYTES];
    getrandom::getrandom(&mut bytes).map_err(|e| format!("no randomness from the operating system: {e}"))?;
    Ok(hex(&bytes))
}

/// The token of an account's API key.
pub fn key_token(account: &AccountId, key: &KeyId, secret: &str) -> String {
    format!("{KEY_PREFIX}.{account}.{key}.{secret}")
}

/// The NATS login of a key: an nkey pair derived from the key's secret, so
/// the engine keeps only its public half ([`convo_domain::config::ApiKeySpec::nats_nkey`])
/// and answers the seed once, with the token.
pub fn nats_keypair(secret: &str) -> Result<nkeys::KeyPair, String> {
    let seed: [u8; 32] =
        Sha256::new().chain_update(b"convo-nats-nkey-v1").chain_update(secret.as_bytes()).finalize().into();
    nkeys::KeyPair::new_from_raw(nkeys::KeyPairType::User, seed)
        .map_err(|e| format!("cannot derive the NATS login: {e}"))
}

/// The subject prefix of a key's reply inboxes (its NATS login may
/// subscribe there, and nowhere else outside its account's events).
pub fn nats_inbox(account: &AccountId, key: &KeyId) -> String {
    convo_store::bus::key_inbox(account.as_str(), key.as_str())
}

/// The NATS logins of an account's live keys under `prefix`: each may
/// publish commands on its account's intake subjects, and subscribe to its
/// own inbox and, when its principal may read events (an admin's key when
/// the account does not limit its users' networks, or an integration with
/// the `events` read scope), to its account's event subjects. Nothing else: not the stream's management API, not another
/// account, not the intake subjects (which carry other principals' credentials).
pub fn nats_users(prefix: &str, catalog: &Catalog) -> Vec<convo_store::launcher::NatsUser> {
    let account = &catalog.account;
    let mut users = Vec::new();
    for (id, key) in &catalog.keys {
        let spec = &key.spec;
        if key.revoked || spec.nats_nkey.is_empty() {
            continue;
        }
        let (holder, events) = match &spec.holder {
            KeyHolder::User(user) => match catalog.user(user) {
                // NATS does not tell the engine where a subscriber is, so an
                // account that limits its users' networks gets no user subscriptions.
                Ok(u) => {
                    (format!("user:{user}"), u.role == Role::Admin && catalog.settings.allowed_networks.is_empty())
                }
                Err(_) => continue, // an inactive user's key logs in nowhere
            },
            KeyHolder::Integration(integration) => {
                (format!("integration:{integration}"), spec.scopes.reads.iter().any(|r| r == "events"))
            }
        };
        let mut subscribe = vec![format!("{}.>", nats_inbox(account, id))];
        if events {
            subscribe.extend(["conv", "agent", "json", "contacts"].map(|kind| format!("{prefix}.{account}.{kind}.>")));
            // The raw configuration commits carry webhook secrets (masked in every JSON view, on
            // `….json.config.…` too): only an admin's key, who may set them, receives those.
            if matches!(spec.holder, KeyHolder::User(_)) {
                subscribe.push(format!("{prefix}.{account}.config.>"));
            }
        }
        users.push(convo_store::launcher::NatsUser {
            nkey: spec.nats_nkey.clone(),
            comment: format!("account {account}, key {id} ({holder})"),
            // The server checks the subject its mapping made (the account's partition) as well.
            publish: vec![format!("{prefix}.{account}.cmd.>"), format!("{prefix}.~part.*.{account}.*")],
            subscribe,
        });
    }
    users
}

/// The token of the platform operator.
pub fn operator_token(secret: &str) -> String {
    format!("{OPERATOR_PREFIX}.{secret}")
}

fn same_hash(secret: &str, expected_hex: &str) -> bool {
    hex(&sha256(secret)).as_bytes().ct_eq(expected_hex.as_bytes()).into()
}

/// Checks a credential presented for `account` (whose catalog is `catalog`,
/// `None` when the account does not exist yet); a JWT's times against the wall clock.
pub fn authenticate(
    config: &AccessConfig,
    credential: Option<&str>,
    account: &AccountId,
    catalog: Option<&Catalog>,
) -> Result<Principal, Denied> {
    let Some(credential) = credential else {
        return Err(Denied::Unauthenticated(
            "no credential: send `Authorization: Bearer <key>` (an API key, the operator's credential or a JWT)".into(),
        ));
    };
    match Credential::parse(credential)? {
        Credential::Operator { secret } => {
            let known = config.operator_sha256.is_some_and(|h| bool::from(sha256(&secret).ct_eq(&h)));
            if known { Ok(Principal::Operator) } else { Err(Denied::Unauthenticated("unknown credential".into())) }
        }
        Credential::Key { account: owner, key, secret } => {
            if &owner != account {
                // Checked first, so a key never says anything about another account.
                return Err(Denied::forbidden(
                    "tenant",
                    format!("this credential belongs to account {owner}; it acts on that account only"),
                ));
            }
            let Some(issued) = catalog.and_then(|c| c.keys.get(&key)) else {
                return Err(Denied::Unauthenticated("unknown credential".into()));
            };
            if !same_hash(&secret, &issued.spec.secret_sha256) {
                return Err(Denied::Unauthenticated("unknown credential".into()));
            }
            if issued.revoked {
                return Err(Denied::Unauthenticated(format!("API key {key} was revoked")));
            }
            let catalog = catalog.expect("a key was found in it");
            match &issued.spec.holder {
                KeyHolder::User(id) => {
                    let user = catalog
                        .user(id)
                        .map_err(|_| Denied::Unauthenticated(format!("user {id} is no longer active")))?;
                    let unredacted = issued.spec.scopes.reads.iter().any(|r| r == UNREDACTED);
                    Ok(Principal::User { account: owner, id: id.clone(), role: user.role, unredacted })
                }
                KeyHolder::Integration(id) => {
                    Ok(Principal::Integration { account: owner, id: id.clone(), scopes: issued.spec.scopes.clone() })
                }
            }
        }
        Credential::Jwt(token) => {
            let Some(jwt) = &config.jwt else {
                return Err(Denied::Unauthenticated(
                    "JWTs are not accepted here (no identity provider is configured)".into(),
                ));
            };
            let claims = verify_jwt(jwt, &token)?;
            let claim = |name: &str| claims.get(name).and_then(Value::as_str).unwrap_or_default().to_owned();
            let owner = AccountId::new(&claim("account"))
                .map_err(|_| Denied::Unauthenticated("the token names no valid `account`".into()))?;
            if &owner != account {
                return Err(Denied::forbidden(
                    "tenant",
                    format!("this token is for account {owner}; it acts on that account only"),
                ));
            }
            let id = UserId::new(&claim("sub"))
                .map_err(|_| Denied::Unauthenticated("the token names no valid user (`sub`)".into()))?;
            let role: Role = serde_json::from_value(Value::String(claim("role")))
                .map_err(|_| Denied::Unauthenticated("the token's `role` is not agent, supervisor or admin".into()))?;
            let user = catalog
                .and_then(|c| c.user(&id).ok())
                .ok_or_else(|| Denied::Unauthenticated(format!("no active user {id} in account {owner}")))?;
            if user.role != role {
                return Err(Denied::forbidden(
                    "role",
                    format!("the token says {id} is {role:?}, the account says {:?}", user.role),
                ));
            }
            Ok(Principal::User { account: owner, id, role, unredacted: false })
        }
    }
}

/// How far a JWT's `exp` and `nbf` may be off this machine's clock, in seconds.
pub const JWT_LEEWAY_SECS: u64 = 30;

/// Checks an HS256 JWT with `jsonwebtoken`: the algorithm pinned to HS256,
/// the signature, `iss`, `aud`, `exp` (required) and `nbf` against the
/// wall clock with [`JWT_LEEWAY_SECS`]; returns its claims.
pub fn verify_jwt(config: &JwtConfig, token: &str) -> Result<serde_json::Map<String, Value>, Denied> {
    use jsonwebtoken::errors::ErrorKind;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.set_issuer(&[config.issuer.as_str()]);
    validation.set_audience(&[config.audience.as_str()]);
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    validation.validate_nbf = true;
    validation.leeway = JWT_LEEWAY_SECS;
    let key = jsonwebtoken::DecodingKey::from_secret(config.key());
    match jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, &key, &validation) {
        Ok(data) => Ok(data.claims),
        Err(e) => {
            let why = match e.kind() {
                ErrorKind::ExpiredSignature => return Err(Denied::Unauthenticated("the token has expired".into())),
                ErrorKind::ImmatureSignature => "not valid yet (`nbf`)".to_owned(),
                ErrorKind::InvalidSignature => "the signature does not match".to_owned(),
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => "only HS256 is accepted".to_owned(),
                ErrorKind::InvalidIssuer => "wrong issuer".to_owned(),
                ErrorKind::InvalidAudience => "wrong audience".to_owned(),
                ErrorKind::MissingRequiredClaim(claim) => format!("no `{claim}`"),
                _ => format!("unreadable ({e})"),
            };
            Err(Denied::Unauthenticated(format!("the token is not valid: {why}")))
        }
    }
}

/// Signs claims as an HS256 JWT (what an identity provider does; tests use it).
pub fn sign_jwt(key: &[u8], claims: &Value) -> String {
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    jsonwebtoken::encode(&header, claims, &jsonwebtoken::EncodingKey::from_secret(key))
        .expect("HS256 signs any JSON claims")
}

/// What a principal may send: the command type must be within an
/// integration's scopes, and nobody but the operator acts on an account that
/// is not theirs. Returns the actor the command is recorded under.
pub fn authorize_command(
    principal: &Principal,
    account: &AccountId,
    kind: &str,
    ip: Option<IpAddr>,
) -> Result<Actor, Denied> {
    match principal {
        Principal::Operator => {}
        Principal::User { account: own, .. } | Principal::Integration { account: own, .. } if own != account => {
            return Err(Denied::forbidden("tenant", format!("this credential acts on account {own} only")));
        }
        Principal::User { .. } => {}
        Principal::Integration { id, scopes, .. } => {
            if !scopes.commands.iter().any(|c| c == kind) {
                return Err(Denied::forbidden(
                    "scope",
                    format!("integration {id} may not send `{kind}` (its scopes: {})", scopes.commands.join(", ")),
                ));
            }
        }
    }
    Ok(principal.actor(ip))
}

/// Whether a principal reads `catalog`'s text unmasked: only with the
/// `unredacted` read scope on its key, and only where the account has rules
/// that mask anything (then each such read is recorded). Everyone else —
/// admins and the operator included — reads what the rules mask, masked.
pub fn reads_unredacted(principal: &Principal, catalog: Option<&Catalog>) -> bool {
    let scoped = match principal {
        Principal::User { unredacted, .. } => *unredacted,
        Principal::Integration { scopes, .. } => scopes.reads.iter().any(|r| r == UNREDACTED),
        Principal::Operator => false,
    };
    scoped && catalog.is_some_and(|c| c.settings.regex_rules.iter().any(|r| r.redact))
}

/// Which part of a read model a principal may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadScope {
    /// The whole account.
    Account,
    /// Only these campaigns (a supervisor's).
    Campaigns(Vec<convo_domain::CampaignId>),
    /// Only this agent's own (an agent's inbox).
    Agent(convo_domain::UserId),
}

/// What a principal may read of `account`'s read model `what` (one of
/// `READ_SCOPES`, or `TIMELINE_READ`): admins and the operator everything;
/// supervisors the reports, contact history, live dashboard, inboxes and
/// timelines of the campaigns they supervise; agents their own inbox and its
/// timelines; an integration what its scopes name.
pub fn authorize_read(
    principal: &Principal,
    account: &AccountId,
    catalog: Option<&Catalog>,
    what: &str,
    ip: Option<IpAddr>,
) -> Result<ReadScope, Denied> {
    match principal {
        Principal::Operator => Ok(ReadScope::Account),
        Principal::User { account: own, .. } | Principal::Integration { account: own, .. } if own != account => {
            Err(Denied::forbidden("tenant", format!("this credential reads account {own} only")))
        }
        Principal::Integration { id, scopes, .. } => {
            // A conversation's timeline is its part of the audit log.
            let granted = |r: &String| r == what || (what == convo_domain::config::TIMELINE_READ && r == "audit");
            if scopes.reads.iter().any(granted) {
                Ok(ReadScope::Account)
            } else {
                Err(Denied::forbidden("scope", format!("integration {id} may not read `{what}`")))
            }
        }
        Principal::User { id, role, .. } => {
            let catalog = catalog.ok_or_else(|| Denied::Unauthenticated("unknown account".into()))?;
            if let Err(e) = catalog.check_actor(&principal.actor(ip)) {
                return Err(Denied::forbidden("network", e.to_string()));
            }
            match (role, what) {
                (Role::Admin, _) => Ok(ReadScope::Account),
                (
                    Role::Supervisor,
                    "reports" | "contact_history" | "live" | "inbox" | convo_domain::config::TIMELINE_READ,
                ) => Ok(ReadScope::Campaigns(
                    catalog
                        .campaigns
                        .values()
                        .filter(|c| c.spec.agents.contains(id))
                        .map(|c| c.spec.id.clone())
                        .collect(),
                )),
                (Role::Supervisor, _) => Err(Denied::forbidden(
                    "role",
                    format!(
                        "a supervisor reads the reports, contact history, live dashboard and inboxes of their campaigns, not `{what}`"
                    ),
                )),
                (Role::Agent, "inbox" | convo_domain::config::TIMELINE_READ) => Ok(ReadScope::Agent(id.clone())),
                (Role::Agent, _) => Err(Denied::forbidden(
                    "role",
                    format!("an agent reads their own inbox, not the account's `{what}`"),
                )),
            }
        }
    }
}
