#![allow(clippy::unwrap_used)]
use super::*;

#[test]
fn ckr_names() {
    assert_eq!(ckr_name(&RvError::PinIncorrect), "CKR_PIN_INCORRECT");
    assert_eq!(
        describe(&CkError::Pkcs11(
            RvError::UserAlreadyLoggedIn,
            cryptoki::context::Function::Login
        )),
        "C_Login returned CKR_USER_ALREADY_LOGGED_IN"
    );
}

#[test]
fn key_ids_from_hex() {
    assert_eq!(
        KeySelector::id_hex("01:AB cd").unwrap(),
        KeySelector::Id(vec![0x01, 0xab, 0xcd])
    );
    assert!(KeySelector::id_hex("0g").is_err());
    assert_eq!(KeySelector::Id(vec![1, 0xab]).to_string(), "id 01ab");
    assert_eq!(
        TokenSelector::Serial("42".into()).to_string(),
        "serial '42'"
    );
}

#[test]
fn signer_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Pkcs11Signer>();
    check::<Pkcs11Key>();
}
