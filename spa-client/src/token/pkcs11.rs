//! Knock signing through any PKCS#11 module: OpenSC (`opensc-pkcs11.so`) for
//! smart cards, Yubico's `libykcs11.so` for YubiKeys, SoftHSM2 for tests.
//!
//! - Ed25519 keys sign with `CKM_EDDSA` (PureEdDSA over the whole
//!   transcript, SPEC §4.4).
//! - P-256 keys sign with `CKM_ECDSA` over `SHA-256(transcript)`, computed
//!   on the host; a DER signature from the token is converted to `r || s`.
//!
//! The module is loaded and initialized once per process and never
//! finalized (`C_Finalize` would end every other signer's session). Each
//! [`Pkcs11Key`] keeps one logged-in session for its whole life behind a
//! mutex, so one signer can sign many knocks, from several threads.
//!
//! Token quirks handled: `CKA_EC_POINT` with or without its DER OCTET STRING
//! wrapping, compressed P-256 points, `CKA_EC_PARAMS` as an OID or as a curve
//! name (`edwards25519`), Ed25519 keys typed `CKK_EC_EDWARDS` or `CKK_EC`,
//! ECDSA signatures as `r || s` or DER, tokens without a public key object
//! (the key is then checked against the certificate with a test signature).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, PoisonError};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::Slot;
use proto_spec::body::SIGNATURE_LEN;
use proto_spec::sign::{SignatureAlgorithm, Signer, SignerError};
use sha2::{Digest as _, Sha256};

mod keygen;

use keygen::RemoteKey;
pub use keygen::{csr, generate_key_pair};

use super::der::{self, Curve};
use super::{
    CertificateSource, KEY_CHECK_MESSAGE, LoadedCertificate, PinSource, TokenError, TokenPublicKey,
    algorithm_name,
};

/// Which token of a module to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSelector {
    /// `CK_TOKEN_INFO.label` (trailing blanks ignored).
    Label(String),
    /// `CK_TOKEN_INFO.serialNumber` (trailing blanks ignored).
    Serial(String),
}

impl fmt::Display for TokenSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Label(l) => write!(f, "label '{l}'"),
            Self::Serial(s) => write!(f, "serial '{s}'"),
        }
    }
}

/// Which key of a token to use: its `CKA_LABEL` or its `CKA_ID`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySelector {
    /// `CKA_LABEL`.
    Label(String),
    /// `CKA_ID`, binary.
    Id(Vec<u8>),
}

impl KeySelector {
    /// An id from hex (`01ab`, `01:ab` or `01 ab`, any case), as `pkcs11-tool`
    /// and `p11tool` print it.
    pub fn id_hex(id: &str) -> Result<Self, hex::FromHexError> {
        let compact: String = id
            .chars()
            .filter(|c| !matches!(c, ':' | ' ' | '-'))
            .collect();
        Ok(Self::Id(hex::decode(compact)?))
    }

    fn attribute(&self) -> Attribute {
        match self {
            Self::Label(l) => Attribute::Label(l.as_bytes().to_vec()),
            Self::Id(id) => Attribute::Id(id.clone()),
        }
    }
}

impl fmt::Display for KeySelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Label(l) => write!(f, "label '{l}'"),
            Self::Id(id) => write!(f, "id {}", hex::encode(id)),
        }
    }
}

/// Everything needed to open a [`Pkcs11Signer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkcs11Config {
    /// Path of the PKCS#11 module (`.so`).
    pub module: PathBuf,
    /// The token.
    pub token: TokenSelector,
    /// The private key.
    pub key: KeySelector,
    /// The PIN.
    pub pin: PinSource,
    /// The certificate.
    pub certificate: CertificateSource,
}

/// A token as listed by [`list_tokens`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenDescription {
    /// The slot it is in.
    pub slot: u64,
    /// Its label.
    pub label: String,
    /// Its serial number.
    pub serial: String,
    /// Manufacturer.
    pub manufacturer: String,
    /// Model.
    pub model: String,
}

// ------------------------------------------------------------------ module

/// Loads and initializes `path`, once per process.
fn load_module(path: &Path) -> Result<Pkcs11, TokenError> {
    static MODULES: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();

    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(TokenError::ModuleNotFound {
                module: path.to_owned(),
            });
        }
        Err(e) => {
            return Err(TokenError::NotAModule {
                module: path.to_owned(),
                cause: e.to_string(),
            });
        }
        Ok(m) if !m.is_file() => {
            return Err(TokenError::NotAModule {
                module: path.to_owned(),
                cause: "not a regular file".to_owned(),
            });
        }
        Ok(_) => {}
    }
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let mut modules = MODULES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(ctx) = modules.get(&canonical) {
        return Ok(ctx.clone());
    }
    let ctx = Pkcs11::new(&canonical).map_err(|e| TokenError::NotAModule {
        module: path.to_owned(),
        cause: match e {
            CkError::LibraryLoading(e) => e.to_string(),
            CkError::MissingSymbol(name) => format!("it exports no {name}"),
            other => describe(&other),
        },
    })?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        // Already initialized by another part of this process: share it.
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => {
            return Err(TokenError::Module {
                module: path.to_owned(),
                cause: describe(&e),
            });
        }
    }
    modules.insert(canonical, ctx.clone());
    Ok(ctx)
}

/// `C_Login returned CKR_PIN_INCORRECT`, not cryptoki's paragraph.
fn describe(e: &CkError) -> String {
    match e {
        CkError::Pkcs11(rv, function) => format!("C_{function:?} returned {}", ckr_name(rv)),
        other => other.to_string(),
    }
}

/// `PinIncorrect` → `CKR_PIN_INCORRECT`.
fn ckr_name(rv: &RvError) -> String {
    let debug = format!("{rv:?}");
    if !debug.chars().all(|c| c.is_ascii_alphanumeric()) {
        return debug;
    }
    let mut out = String::from("CKR");
    for c in debug.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

fn token_label(
    ctx: &Pkcs11,
    slot: Slot,
) -> Result<Option<(String, String, String, String)>, CkError> {
    let info = ctx.get_token_info(slot)?;
    if !info.token_initialized() {
        return Ok(None);
    }
    Ok(Some((
        info.label().trim_end().to_owned(),
        info.serial_number().trim_end().to_owned(),
        info.manufacturer_id().trim_end().to_owned(),
        info.model().trim_end().to_owned(),
    )))
}

/// Lists the initialized tokens of a module.
pub fn list_tokens(module: &Path) -> Result<Vec<TokenDescription>, TokenError> {
    let ctx = load_module(module)?;
    let module_err = |e: CkError| TokenError::Module {
        module: module.to_owned(),
        cause: describe(&e),
    };
    let mut out = Vec::new();
    for slot in ctx.get_slots_with_token().map_err(module_err)? {
        if let Some((label, serial, manufacturer, model)) =
            token_label(&ctx, slot).map_err(module_err)?
        {
            out.push(TokenDescription {
                slot: slot.id(),
                label,
                serial,
                manufacturer,
                model,
            });
        }
    }
    Ok(out)
}

/// A selected token.
struct Token {
    ctx: Pkcs11,
    slot: Slot,
    label: String,
}

impl Token {
    fn find(module: &Path, selector: &TokenSelector) -> Result<Self, TokenError> {
        let ctx = load_module(module)?;
        let tokens = list_tokens(module)?;
        let matching: Vec<&TokenDescription> = tokens
            .iter()
            .filter(|t| match selector {
                TokenSelector::Label(l) => t.label == l.trim_end(),
                TokenSelector::Serial(s) => t.serial == s.trim_end(),
            })
            .collect();
        match matching.as_slice() {
            [t] => Ok(Self {
                slot: Slot::try_from(t.slot).map_err(|e| TokenError::Module {
                    module: module.to_owned(),
                    cause: e.to_string(),
                })?,
                label: t.label.clone(),
                ctx,
            }),
            [] => Err(TokenError::TokenNotFound {
                module: module.to_owned(),
                token: selector.to_string(),
                present: if tokens.is_empty() {
                    "none".to_owned()
                } else {
                    tokens
                        .iter()
                        .map(|t| format!("'{}' serial {}", t.label, t.serial))
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            }),
            many => Err(TokenError::TokenAmbiguous {
                module: module.to_owned(),
                token: selector.to_string(),
                count: many.len(),
            }),
        }
    }

    fn err(&self, e: &CkError) -> TokenError {
        TokenError::Pkcs11 {
            token: self.label.clone(),
            cause: describe(e),
        }
    }

    /// Opens a session and logs the user in. The login state is the
    /// token's, shared by every session of this process (PKCS#11 §5.6): if
    /// another key of this process keeps a session logged in, the new
    /// session is logged in already and the PIN is not read (nor asked for)
    /// a second time.
    fn login(&self, read_write: bool, pin: &PinSource) -> Result<Session, TokenError> {
        let session = if read_write {
            self.ctx.open_rw_session(self.slot)
        } else {
            self.ctx.open_ro_session(self.slot)
        }
        .map_err(|e| self.err(&e))?;
        let logged_in = session.get_session_info().is_ok_and(|info| {
            matches!(
                info.session_state(),
                SessionState::RoUser | SessionState::RwUser
            )
        });
        if logged_in {
            return Ok(session);
        }
        let pin = pin.read(&format!("token '{}'", self.label))?;
        match session.login(UserType::User, Some(&pin)) {
            // Login state is per token and process: another signer of this
            // process is already logged in.
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(session),
            Err(CkError::Pkcs11(
                RvError::PinIncorrect | RvError::PinLenRange | RvError::PinInvalid,
                _,
            )) => Err(TokenError::WrongPin {
                token: self.label.clone(),
            }),
            Err(CkError::Pkcs11(RvError::PinLocked, _)) => Err(TokenError::PinLocked {
                token: self.label.clone(),
            }),
            Err(e) => Err(self.err(&e)),
        }
    }
}

// --------------------------------------------------------------------- key

/// A private key on a token, with a logged-in session kept open for the
/// key's life. It signs with the token; the private key never leaves it.
pub struct Pkcs11Key {
    session: Mutex<Session>,
    handle: ObjectHandle,
    algorithm: SignatureAlgorithm,
    public_key: Option<TokenPublicKey>,
    token: String,
    selector: KeySelector,
    id: Vec<u8>,
    label: Option<String>,
}

impl fmt::Debug for Pkcs11Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Key")
            .field("token", &self.token)
            .field("key", &self.selector.to_string())
            .field("algorithm", &self.algorithm)
            .field("public_key", &self.public_key)
            .finish_non_exhaustive()
    }
}

fn find_attr(attrs: &[Attribute], ty: AttributeType) -> Option<&Attribute> {
    attrs.iter().find(|a| a.attribute_type() == ty)
}

fn bytes_attr(attrs: &[Attribute], ty: AttributeType) -> Option<Vec<u8>> {
    match find_attr(attrs, ty) {
        Some(
            Attribute::EcParams(v)
            | Attribute::EcPoint(v)
            | Attribute::Id(v)
            | Attribute::Label(v)
            | Attribute::Value(v),
        ) => Some(v.clone()),
        _ => None,
    }
}

fn bool_attr(attrs: &[Attribute], ty: AttributeType) -> Option<bool> {
    match find_attr(attrs, ty) {
        Some(
            Attribute::Sign(b)
            | Attribute::AlwaysAuthenticate(b)
            | Attribute::Sensitive(b)
            | Attribute::Extractable(b),
        ) => Some(*b),
        _ => None,
    }
}

impl Pkcs11Key {
    /// Opens the key `key` on `token` of `module`, logging in with `pin`.
    pub fn open(
        module: &Path,
        token: &TokenSelector,
        key: &KeySelector,
        pin: &PinSource,
    ) -> Result<Self, TokenError> {
        let token = Token::find(module, token)?;
        let session = token.login(false, pin)?;
        Self::from_session(&token, session, key)
    }

    fn from_session(
        token: &Token,
        session: Session,
        selector: &KeySelector,
    ) -> Result<Self, TokenError> {
        let key_err = |cause: String| TokenError::UnsupportedKey {
            token: token.label.clone(),
            key: selector.to_string(),
            cause,
        };
        let handles = session
            .find_objects(&[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                selector.attribute(),
            ])
            .map_err(|e| token.err(&e))?;
        let handle = match handles.as_slice() {
            [h] => *h,
            [] => {
                return Err(TokenError::KeyNotFound {
                    token: token.label.clone(),
                    key: selector.to_string(),
                });
            }
            many => {
                return Err(TokenError::KeyAmbiguous {
                    token: token.label.clone(),
                    key: selector.to_string(),
                    count: many.len(),
                });
            }
        };
        let attrs = session
            .get_attributes(
                handle,
                &[
                    AttributeType::KeyType,
                    AttributeType::EcParams,
                    AttributeType::EcPoint,
                    AttributeType::Sign,
                    AttributeType::AlwaysAuthenticate,
                    AttributeType::Id,
                    AttributeType::Label,
                ],
            )
            .map_err(|e| token.err(&e))?;
        let key_type = match find_attr(&attrs, AttributeType::KeyType) {
            Some(Attribute::KeyType(kt)) => Some(*kt),
            _ => None,
        };
        if let Some(kt) = key_type
            && kt != KeyType::EC
            && kt != KeyType::EC_EDWARDS
        {
            return Err(key_err(format!(
                "it is a {kt} key; spa signs with Ed25519 or P-256 keys only"
            )));
        }
        if bool_attr(&attrs, AttributeType::Sign) == Some(false) {
            return Err(key_err("it may not sign (CKA_SIGN is false)".to_owned()));
        }
        if bool_attr(&attrs, AttributeType::AlwaysAuthenticate) == Some(true) {
            return Err(key_err(
                "it needs the PIN for every signature (CKA_ALWAYS_AUTHENTICATE); \
                 use a key without that policy (on a PIV card: slot 9a, not 9c)"
                    .to_owned(),
            ));
        }
        let id = bytes_attr(&attrs, AttributeType::Id).unwrap_or_default();
        let label = bytes_attr(&attrs, AttributeType::Label)
            .map(|l| String::from_utf8_lossy(&l).into_owned());

        // The public key object: same id (the usual pairing), else same
        // selector.
        let mut public_attrs = Vec::new();
        let public_templates = [
            (!id.is_empty()).then(|| Attribute::Id(id.clone())),
            Some(selector.attribute()),
        ];
        for template in public_templates.into_iter().flatten() {
            let found = session
                .find_objects(&[Attribute::Class(ObjectClass::PUBLIC_KEY), template])
                .map_err(|e| token.err(&e))?;
            if let [h] = found.as_slice() {
                public_attrs = session
                    .get_attributes(*h, &[AttributeType::EcParams, AttributeType::EcPoint])
                    .map_err(|e| token.err(&e))?;
                break;
            }
        }

        let params = bytes_attr(&attrs, AttributeType::EcParams)
            .or_else(|| bytes_attr(&public_attrs, AttributeType::EcParams));
        let point = bytes_attr(&public_attrs, AttributeType::EcPoint)
            .or_else(|| bytes_attr(&attrs, AttributeType::EcPoint));
        let curve = match (&params, key_type) {
            (Some(p), _) => der::parse_ec_params(p),
            (None, Some(kt)) if kt == KeyType::EC_EDWARDS => Curve::Ed25519,
            (None, _)
                if point
                    .as_ref()
                    .is_some_and(|p| [33, 35, 65, 67].contains(&p.len())) =>
            {
                Curve::P256
            }
            (None, _) => Curve::Other("unknown curve (no CKA_EC_PARAMS)".to_owned()),
        };
        let algorithm = match &curve {
            Curve::Ed25519 => SignatureAlgorithm::Ed25519,
            Curve::P256 => SignatureAlgorithm::EcdsaP256Sha256,
            Curve::Other(name) => {
                return Err(key_err(format!(
                    "{name} is not supported (spa takes Ed25519 or P-256)"
                )));
            }
        };
        let public_key = point
            .map(|p| der::parse_ec_point(&curve, &p))
            .transpose()
            .map_err(key_err)?;
        Ok(Self {
            session: Mutex::new(session),
            handle,
            algorithm,
            public_key,
            token: token.label.clone(),
            selector: selector.clone(),
            id,
            label,
        })
    }

    /// The key's algorithm.
    pub fn algorithm(&self) -> SignatureAlgorithm {
        self.algorithm
    }

    /// The public key, if the token shows it (a public key object with the
    /// same id or label, or `CKA_EC_POINT` on the private key).
    pub fn public_key(&self) -> Option<&TokenPublicKey> {
        self.public_key.as_ref()
    }

    /// The token's label.
    pub fn token_label(&self) -> &str {
        &self.token
    }

    /// The key's `CKA_ID` (empty if it has none).
    pub fn id(&self) -> &[u8] {
        &self.id
    }

    /// The key's `CKA_LABEL`, if any.
    pub fn label(&self) -> Option<&str> {
        self.label.as_deref()
    }

    /// Signs `message` on the token: Ed25519 over the message itself, P-256
    /// over its SHA-256 (hashed here). Returns 64 bytes (`r || s` for
    /// P-256). The signature is not verified here; [`Pkcs11Signer`] does.
    pub fn sign_message(&self, message: &[u8]) -> Result<[u8; SIGNATURE_LEN], TokenError> {
        let bad = |cause: String| TokenError::BadSignature {
            token: self.token.clone(),
            key: self.selector.to_string(),
            cause,
        };
        let raw = {
            let session = self.session.lock().unwrap_or_else(PoisonError::into_inner);
            match self.algorithm {
                SignatureAlgorithm::Ed25519 => session.sign(
                    &Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
                    self.handle,
                    message,
                ),
                SignatureAlgorithm::EcdsaP256Sha256 => {
                    session.sign(&Mechanism::Ecdsa, self.handle, &Sha256::digest(message))
                }
            }
        }
        .map_err(|e| TokenError::Pkcs11 {
            token: self.token.clone(),
            cause: format!("signing with key {}: {}", self.selector, describe(&e)),
        })?;
        match self.algorithm {
            SignatureAlgorithm::Ed25519 => raw
                .as_slice()
                .try_into()
                .map_err(|_| bad(format!("{} bytes from CKM_EDDSA, expected 64", raw.len()))),
            SignatureAlgorithm::EcdsaP256Sha256 => der::ecdsa_p256_to_raw(&raw).map_err(bad),
        }
    }

    /// Reads the `CKO_CERTIFICATE` object with the key's id (or, failing
    /// that, its selector).
    fn certificate_from_token(&self) -> Result<LoadedCertificate, TokenError> {
        let session = self.session.lock().unwrap_or_else(PoisonError::into_inner);
        let err = |e: CkError| TokenError::Pkcs11 {
            token: self.token.clone(),
            cause: format!("reading the certificate: {}", describe(&e)),
        };
        let templates = [
            (!self.id.is_empty()).then(|| Attribute::Id(self.id.clone())),
            Some(self.selector.attribute()),
        ];
        for template in templates.into_iter().flatten() {
            let found = session
                .find_objects(&[Attribute::Class(ObjectClass::CERTIFICATE), template])
                .map_err(err)?;
            if let Some(h) = found.first() {
                let attrs = session
                    .get_attributes(*h, &[AttributeType::Value])
                    .map_err(err)?;
                if let Some(value) = bytes_attr(&attrs, AttributeType::Value) {
                    return LoadedCertificate::parse(
                        &value,
                        format!("object with {} on token '{}'", self.selector, self.token),
                    );
                }
            }
        }
        Err(TokenError::CertificateNotOnToken {
            token: self.token.clone(),
            key: self.selector.to_string(),
        })
    }

    /// A PKCS#10 certificate request for this key, signed by the token.
    /// `params` gives the subject, SANs and extensions; its validity and
    /// serial are for the CA to choose.
    pub fn csr(
        &self,
        params: &rcgen::CertificateParams,
    ) -> Result<rcgen::CertificateSigningRequest, TokenError> {
        let csr_err = |cause: String| TokenError::Csr {
            token: self.token.clone(),
            key: self.selector.to_string(),
            cause,
        };
        let public = self.public_key.as_ref().ok_or_else(|| {
            csr_err(
                "the token shows no public key for it (no public key object, no CKA_EC_POINT)"
                    .to_owned(),
            )
        })?;
        let remote = RemoteKey {
            key: self,
            public,
            failure: Mutex::new(None),
        };
        match params.serialize_request(&remote) {
            Ok(csr) => Ok(csr),
            Err(e) => Err(remote
                .failure
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take()
                .unwrap_or_else(|| csr_err(e.to_string()))),
        }
    }
}

// ------------------------------------------------------------------ signer

/// A knock signer whose key is on a PKCS#11 token. Opening it checks that
/// the token key is the certificate's key; every signature it returns has
/// been verified with the certificate's key. `Send + Sync`: one logged-in
/// session, shared behind a mutex.
#[derive(Debug)]
pub struct Pkcs11Signer {
    key: Pkcs11Key,
    certificate: LoadedCertificate,
}

impl Pkcs11Signer {
    /// Loads the module, finds the token and key, logs in, reads the
    /// certificate and checks it against the key.
    pub fn open(config: &Pkcs11Config) -> Result<Self, TokenError> {
        let key = Pkcs11Key::open(&config.module, &config.token, &config.key, &config.pin)?;
        Self::new(key, &config.certificate)
    }

    /// A signer from an open key and its certificate. Refuses a certificate
    /// whose key is not `key`: by comparing public keys if the token shows
    /// the public key, else by verifying a test signature.
    pub fn new(key: Pkcs11Key, certificate: &CertificateSource) -> Result<Self, TokenError> {
        let certificate = match certificate {
            CertificateSource::File(path) => LoadedCertificate::from_file(path)?,
            CertificateSource::Token => key.certificate_from_token()?,
        };
        let mismatch = |detail: String| TokenError::KeyMismatch {
            token: key.token.clone(),
            key: key.selector.to_string(),
            certificate: certificate.name.clone(),
            detail,
        };
        match &key.public_key {
            Some(public) => certificate.check_key(public).map_err(mismatch)?,
            None => {
                if certificate.key.algorithm() != key.algorithm {
                    return Err(mismatch(format!(
                        "the token key is {}, the certificate's is {}",
                        algorithm_name(key.algorithm),
                        algorithm_name(certificate.key.algorithm())
                    )));
                }
                let sig = key.sign_message(KEY_CHECK_MESSAGE)?;
                if !certificate.key.verify(KEY_CHECK_MESSAGE, &sig) {
                    return Err(mismatch(
                        "a test signature by the token key does not verify with the \
                         certificate's key"
                            .to_owned(),
                    ));
                }
            }
        }
        Ok(Self { key, certificate })
    }

    /// The key on the token.
    pub fn key(&self) -> &Pkcs11Key {
        &self.key
    }
}

impl Signer for Pkcs11Signer {
    fn algorithm(&self) -> SignatureAlgorithm {
        self.key.algorithm
    }

    fn certificate_der(&self) -> &[u8] {
        &self.certificate.der
    }

    fn sign(&self, transcript: &[u8]) -> Result<[u8; SIGNATURE_LEN], SignerError> {
        let sig = self
            .key
            .sign_message(transcript)
            .map_err(|e| SignerError(e.to_string()))?;
        self.certificate.check_signature(
            &self.key.token,
            &self.key.selector.to_string(),
            transcript,
            &sig,
        )?;
        Ok(sig)
    }
}

#[cfg(test)]
mod tests;
