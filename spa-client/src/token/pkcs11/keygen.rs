//! Making a key pair on a token and a certificate request signed by it
//! (`spa-client keygen --pkcs11`): the private key never leaves the token.

use super::*;

/// The token key as an `rcgen` signing key, for CSRs.
pub(super) struct RemoteKey<'a> {
    pub(super) key: &'a Pkcs11Key,
    pub(super) public: &'a TokenPublicKey,
    /// The token error behind an `rcgen::Error::RemoteKeyError`.
    pub(super) failure: Mutex<Option<TokenError>>,
}

impl rcgen::PublicKeyData for RemoteKey<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.public.raw()
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        match self.public {
            TokenPublicKey::Ed25519(_) => &rcgen::PKCS_ED25519,
            TokenPublicKey::P256(_) => &rcgen::PKCS_ECDSA_P256_SHA256,
        }
    }
}

impl rcgen::SigningKey for RemoteKey<'_> {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let result = self.key.sign_message(msg).and_then(|sig| {
            if !super::super::verify(self.public, msg, &sig) {
                return Err(TokenError::KeyMismatch {
                    token: self.key.token.clone(),
                    key: self.key.selector.to_string(),
                    certificate: "request".to_owned(),
                    detail: "the private key's signature does not verify with the token's \
                             public key object"
                        .to_owned(),
                });
            }
            match self.public {
                TokenPublicKey::Ed25519(_) => Ok(sig.to_vec()),
                TokenPublicKey::P256(_) => {
                    der::ecdsa_p256_raw_to_der(&sig).map_err(|cause| TokenError::BadSignature {
                        token: self.key.token.clone(),
                        key: self.key.selector.to_string(),
                        cause,
                    })
                }
            }
        });
        result.map_err(|e| {
            *self.failure.lock().unwrap_or_else(PoisonError::into_inner) = Some(e);
            rcgen::Error::RemoteKeyError
        })
    }
}

/// Generates a key pair on the token: Ed25519
/// (`CKM_EC_EDWARDS_KEY_PAIR_GEN`, parameters OID 1.3.101.112) or P-256
/// (`CKM_EC_KEY_PAIR_GEN`). The private key is `CKA_TOKEN`, `CKA_PRIVATE`,
/// `CKA_SENSITIVE` and not `CKA_EXTRACTABLE`: it never leaves the token.
/// Both halves get `label` and, if not empty, `id`. Refuses if a private key
/// with that label or id exists. Returns the new key, logged in, ready for
/// [`Pkcs11Key::csr`].
pub fn generate_key_pair(
    module: &Path,
    token: &TokenSelector,
    label: &str,
    id: &[u8],
    algorithm: SignatureAlgorithm,
    pin: &PinSource,
) -> Result<Pkcs11Key, TokenError> {
    let token = Token::find(module, token)?;
    let session = token.login(true, pin)?;
    let mut taken = vec![KeySelector::Label(label.to_owned())];
    if !id.is_empty() {
        taken.push(KeySelector::Id(id.to_vec()));
    }
    for selector in &taken {
        let found = session
            .find_objects(&[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                selector.attribute(),
            ])
            .map_err(|e| token.err(&e))?;
        if !found.is_empty() {
            return Err(TokenError::KeyExists {
                token: token.label.clone(),
                key: selector.to_string(),
            });
        }
    }

    // Tokens disagree on CKA_KEY_TYPE for Ed25519 (CKK_EC_EDWARDS in PKCS#11
    // 3.0, CKK_EC in some older modules, or none accepted in the template)
    // and on the form of CKA_EC_PARAMS (OID, or the curve name). Try the
    // standard form first, then the others on a template error.
    let mut printable_ed25519 = vec![0x13, 12];
    printable_ed25519.extend_from_slice(b"edwards25519");
    let (mechanism, key_types, params_forms): (Mechanism<'_>, Vec<Option<KeyType>>, Vec<Vec<u8>>) =
        match algorithm {
            SignatureAlgorithm::Ed25519 => (
                Mechanism::EccEdwardsKeyPairGen,
                vec![Some(KeyType::EC_EDWARDS), Some(KeyType::EC), None],
                vec![der::OID_ED25519.to_vec(), printable_ed25519],
            ),
            SignatureAlgorithm::EcdsaP256Sha256 => (
                Mechanism::EccKeyPairGen,
                vec![Some(KeyType::EC), None],
                vec![der::OID_P256.to_vec()],
            ),
        };
    let mut last_err = None;
    'outer: for params in &params_forms {
        for key_type in &key_types {
            let mut public = vec![
                Attribute::Token(true),
                Attribute::Private(false),
                Attribute::Verify(true),
                Attribute::EcParams(params.clone()),
                Attribute::Label(label.as_bytes().to_vec()),
            ];
            let mut private = vec![
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Sign(true),
                Attribute::Label(label.as_bytes().to_vec()),
            ];
            if !id.is_empty() {
                public.push(Attribute::Id(id.to_vec()));
                private.push(Attribute::Id(id.to_vec()));
            }
            if let Some(kt) = key_type {
                public.push(Attribute::KeyType(*kt));
                private.push(Attribute::KeyType(*kt));
            }
            match session.generate_key_pair(&mechanism, &public, &private) {
                Ok(_) => {
                    last_err = None;
                    break 'outer;
                }
                Err(
                    e @ CkError::Pkcs11(
                        RvError::TemplateInconsistent
                        | RvError::TemplateIncomplete
                        | RvError::AttributeValueInvalid
                        | RvError::AttributeTypeInvalid
                        | RvError::KeyTypeInconsistent
                        | RvError::CurveNotSupported
                        | RvError::DomainParamsInvalid,
                        _,
                    ),
                ) => last_err = Some(e),
                Err(CkError::Pkcs11(RvError::MechanismInvalid, _)) => {
                    return Err(TokenError::UnsupportedKey {
                        token: token.label.clone(),
                        key: format!("label '{label}'"),
                        cause: format!(
                            "the token cannot generate {} keys ({} is not supported)",
                            algorithm_name(algorithm),
                            match algorithm {
                                SignatureAlgorithm::Ed25519 => "CKM_EC_EDWARDS_KEY_PAIR_GEN",
                                SignatureAlgorithm::EcdsaP256Sha256 => "CKM_EC_KEY_PAIR_GEN",
                            }
                        ),
                    });
                }
                Err(e) => return Err(token.err(&e)),
            }
        }
    }
    if let Some(e) = last_err {
        return Err(TokenError::Pkcs11 {
            token: token.label.clone(),
            cause: format!(
                "generating {} key pair: {}",
                match algorithm {
                    SignatureAlgorithm::Ed25519 => "an Ed25519",
                    SignatureAlgorithm::EcdsaP256Sha256 => "an ECDSA P-256",
                },
                describe(&e)
            ),
        });
    }
    let selector = if id.is_empty() {
        KeySelector::Label(label.to_owned())
    } else {
        KeySelector::Id(id.to_vec())
    };
    Pkcs11Key::from_session(&token, session, &selector)
}

/// A PKCS#10 certificate request for the key `key` on `token`, signed by the
/// token. See [`Pkcs11Key::csr`].
pub fn csr(
    module: &Path,
    token: &TokenSelector,
    key: &KeySelector,
    pin: &PinSource,
    params: &rcgen::CertificateParams,
) -> Result<rcgen::CertificateSigningRequest, TokenError> {
    Pkcs11Key::open(module, token, key, pin)?.csr(params)
}
