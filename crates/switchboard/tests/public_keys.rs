//! RS256 and ES256 tokens verified with a public key, with the algorithm pinned.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::path::PathBuf;

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use switchboard::auth::{unix_now, Claims};
use switchboard::config::{Secret, TokenAlgorithm};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn claims(user: &str) -> Claims {
    Claims {
        sub: user.into(),
        exp: Some(unix_now() + 60),
        ..Claims::default()
    }
}

async fn server_with(algorithm: TokenAlgorithm, public_key: &str) -> TestServer {
    let mut config = config();
    config.token.algorithm = algorithm;
    config.token.hmac_secret = Secret::default();
    config.token.public_key_file = Some(fixture(public_key));
    start(config).await
}

#[tokio::test]
async fn es256_tokens_signed_by_the_private_key_are_accepted() {
    let server = server_with(TokenAlgorithm::ES256, "es256-public.pem").await;
    let key = EncodingKey::from_ec_pem(&std::fs::read(fixture("es256-private.pk8.pem")).unwrap())
        .unwrap();
    let token =
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims("ec-user"), &key).unwrap();
    assert!(connect(&format!(
        "{}?token={token}",
        server.url("/ws/notify/user/ec-user")
    ))
    .await
    .is_ok());
    server.stop().await;
}

#[tokio::test]
async fn rs256_tokens_signed_by_the_private_key_are_accepted() {
    let server = server_with(TokenAlgorithm::RS256, "rs256-public.pem").await;
    let key =
        EncodingKey::from_rsa_pem(&std::fs::read(fixture("rs256-private.pem")).unwrap()).unwrap();
    let token =
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims("rsa-user"), &key).unwrap();
    assert!(
        connect(&format!("{}?token={token}", server.url("/ws/chat/a")))
            .await
            .is_ok()
    );
    server.stop().await;
}

/// The classic algorithm-confusion attack: an HS256 token whose HMAC key is the server's
/// public key. With the algorithm pinned to RS256 it is refused.
#[tokio::test]
async fn an_hs256_token_keyed_with_the_public_key_is_refused() {
    let server = server_with(TokenAlgorithm::RS256, "rs256-public.pem").await;
    let public = std::fs::read(fixture("rs256-public.pem")).unwrap();
    let forged = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims("attacker"),
        &EncodingKey::from_secret(&public),
    )
    .unwrap();
    let (status, body) =
        refused(&format!("{}?token={forged}", server.url("/ws/chat/a")), &[]).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("invalid_token"))
    );
    server.stop().await;
}

#[tokio::test]
async fn a_public_key_of_the_wrong_kind_stops_the_start() {
    let mut config = config();
    config.token.algorithm = TokenAlgorithm::ES256;
    config.token.hmac_secret = Secret::default();
    config.token.public_key_file = Some(fixture("rs256-public.pem"));
    let error = switchboard::Gateway::bind(config)
        .await
        .err()
        .expect("start refused");
    assert!(error.to_string().contains("ES256"), "{error}");
}
