//! Signed Ultravox requests (reference §1.7): the HMAC-SHA256 signatures of a data connection's
//! WebSocket upgrade and of a webhook, checked against every configured secret, with replay
//! protection by timestamp.

use chrono::{DateTime, NaiveDateTime, TimeDelta, Utc};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::{Choice, ConstantTimeEq};

use super::headers;

/// How far a signature timestamp may be from our clock, either way. Ultravox says to reject
/// timestamps older than about a minute (replay protection); a timestamp as far in the future
/// is as suspicious, and a minute of tolerance absorbs ordinary clock drift.
pub(crate) const MAX_SIGNATURE_SKEW: TimeDelta = TimeDelta::seconds(60);

/// Why a signed Ultravox request was refused. The variants are for logs and metrics; the
/// client only ever gets a plain 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SignatureError {
    /// No (non-empty) shared secret is configured, so nothing can be verified.
    #[error("no shared secret is configured, so no signature can be accepted")]
    NoSecrets,
    /// A required header is absent or empty.
    #[error("the {0} header is missing or empty")]
    MissingHeader(&'static str),
    /// The timestamp header is not an ISO-8601 date-time (kept short for the log).
    #[error("the signature timestamp {0:?} is not an ISO-8601 date-time")]
    InvalidTimestamp(String),
    /// Signed more than [`MAX_SIGNATURE_SKEW`] ago: a replay, or a very late delivery.
    #[error("the signature timestamp is {age_secs} s old; at most 60 s is accepted")]
    Stale {
        /// Whole seconds between the timestamp and our clock.
        age_secs: i64,
    },
    /// Signed more than [`MAX_SIGNATURE_SKEW`] in the future.
    #[error("the signature timestamp is {ahead_secs} s in the future; at most 60 s is accepted")]
    FromFuture {
        /// Whole seconds the timestamp is ahead of our clock.
        ahead_secs: i64,
    },
    /// No signature in the header matches any configured secret.
    #[error("no signature matches any configured secret")]
    Mismatch,
}

/// Verifies the signed WebSocket upgrade of an Ultravox data connection.
///
/// Ultravox sends `X-Ultravox-Call-ID`, `X-Ultravox-Signature-Timestamp` and
/// `X-Ultravox-Signature`, a comma-separated list of `hex(HMAC-SHA256(secret, callId +
/// timestamp))`, one per secret configured on the call or agent. The upgrade is accepted when
/// any listed signature matches any of `secrets` (so secrets can be rotated on either side
/// without downtime) and the timestamp is within [`MAX_SIGNATURE_SKEW`] of `now`.
///
/// `call_id` and `timestamp` must be the header values exactly as received: they are what was
/// signed. Empty secrets are ignored, because an empty HMAC key is one anybody can sign with.
pub(crate) fn verify_data_connection(
    secrets: &[String],
    call_id: &str,
    timestamp: &str,
    signatures_header: &str,
    now: DateTime<Utc>,
) -> Result<(), SignatureError> {
    if !secrets.iter().any(|s| !s.is_empty()) {
        return Err(SignatureError::NoSecrets);
    }
    if call_id.is_empty() {
        return Err(SignatureError::MissingHeader(headers::CALL_ID));
    }
    SignedRequest {
        parts: [call_id.as_bytes(), timestamp.as_bytes()],
        timestamp,
        timestamp_header: headers::SIGNATURE_TIMESTAMP,
        signatures: signatures_header,
        signatures_header: headers::SIGNATURE,
    }
    .verify(secrets, now)
}

/// Verifies an Ultravox webhook: `X-Ultravox-Webhook-Signature` holds comma-separated
/// `hex(HMAC-SHA256(secret, rawBody ‖ timestamp))`, timestamp from
/// `X-Ultravox-Webhook-Timestamp`. Same acceptance rules as [`verify_data_connection`].
///
/// `raw_body` must be the bytes as received, before any JSON parsing.
#[cfg_attr(not(test), expect(dead_code, reason = "no Ultravox webhook yet"))]
pub(crate) fn verify_webhook(
    secrets: &[String],
    raw_body: &[u8],
    timestamp: &str,
    signatures_header: &str,
    now: DateTime<Utc>,
) -> Result<(), SignatureError> {
    if !secrets.iter().any(|s| !s.is_empty()) {
        return Err(SignatureError::NoSecrets);
    }
    SignedRequest {
        parts: [raw_body, timestamp.as_bytes()],
        timestamp,
        timestamp_header: headers::WEBHOOK_TIMESTAMP,
        signatures: signatures_header,
        signatures_header: headers::WEBHOOK_SIGNATURE,
    }
    .verify(secrets, now)
}

/// The signature Ultravox sends for a data connection: `hex(HMAC-SHA256(secret, callId +
/// timestamp))`. For fake Ultravox peers in tests and for tooling.
pub fn sign_data_connection(secret: &str, call_id: &str, timestamp: &str) -> String {
    hex::encode(hmac_sha256(
        secret.as_bytes(),
        &[call_id.as_bytes(), timestamp.as_bytes()],
    ))
}

/// The signature Ultravox sends for a webhook: `hex(HMAC-SHA256(secret, rawBody ‖ timestamp))`.
#[cfg_attr(not(test), expect(dead_code, reason = "no Ultravox webhook yet"))]
pub(crate) fn sign_webhook(secret: &str, raw_body: &[u8], timestamp: &str) -> String {
    hex::encode(hmac_sha256(
        secret.as_bytes(),
        &[raw_body, timestamp.as_bytes()],
    ))
}

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC accepts keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// The parts of one signed request, shared by both checks.
struct SignedRequest<'a> {
    /// Concatenated, they are the signed message.
    parts: [&'a [u8]; 2],
    timestamp: &'a str,
    timestamp_header: &'static str,
    signatures: &'a str,
    signatures_header: &'static str,
}

impl SignedRequest<'_> {
    fn verify(&self, secrets: &[String], now: DateTime<Utc>) -> Result<(), SignatureError> {
        if self.timestamp.is_empty() {
            return Err(SignatureError::MissingHeader(self.timestamp_header));
        }
        // Ultravox writes the list as "a,b"; tolerate "a, b" and stray commas.
        let candidates: Vec<&str> = self
            .signatures
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if candidates.is_empty() {
            return Err(SignatureError::MissingHeader(self.signatures_header));
        }
        // Freshness is checked before the HMAC only because it is cheaper; the timestamp is part
        // of the signed message, so it cannot be moved without breaking the signature.
        let signed_at = parse_signature_timestamp(self.timestamp)?;
        let age = now - signed_at;
        if age > MAX_SIGNATURE_SKEW {
            return Err(SignatureError::Stale {
                age_secs: age.num_seconds(),
            });
        }
        if -age > MAX_SIGNATURE_SKEW {
            return Err(SignatureError::FromFuture {
                ahead_secs: (-age).num_seconds(),
            });
        }
        // Every (secret, candidate) pair is compared, with no early exit, in constant time:
        // timing then reveals neither how much of a forged signature was right nor which
        // secret matched.
        let decoded: Vec<Vec<u8>> = candidates
            .iter()
            .filter_map(|c| hex::decode(c).ok())
            .collect();
        let mut matched = Choice::from(0);
        for secret in secrets.iter().filter(|s| !s.is_empty()) {
            let expected = hmac_sha256(secret.as_bytes(), &self.parts);
            for candidate in &decoded {
                // `ct_eq` on slices of different lengths is simply false.
                matched |= expected.as_slice().ct_eq(candidate.as_slice());
            }
        }
        if bool::from(matched) {
            Ok(())
        } else {
            Err(SignatureError::Mismatch)
        }
    }
}

/// Parses the signature timestamp: RFC 3339 (`2026-01-01T00:00:00+00:00`, `…Z`, fractional
/// seconds), or an ISO-8601 date-time without offset, which Ultravox documents as UTC.
fn parse_signature_timestamp(value: &str) -> Result<DateTime<Utc>, SignatureError> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .or_else(|_| {
            NaiveDateTime::parse_from_str(value, "%Y-%m-%dT%H:%M:%S%.f").map(|t| t.and_utc())
        })
        // The header is attacker-controlled: keep only a short prefix for the log.
        .map_err(|_| SignatureError::InvalidTimestamp(value.chars().take(40).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "test-shared-secret-0123";
    const CALL_ID: &str = "550e8400-e29b-41d4-a716-446655440000";
    const TS: &str = "2026-01-01T00:00:00+00:00";
    const DATA_SIG: &str = "44f6f919fcf27a30c214bf7920a426538b1e4def26308a0d31dc88d4ebe91952";
    const WEBHOOK_BODY: &str =
        r#"{"event":"call.ended","call":{"callId":"550e8400-e29b-41d4-a716-446655440000"}}"#;
    const WEBHOOK_SIG: &str = "b12f72510bb6ebff774db7b4d59b8ebc010a0eea5005f12f88da65c54f86a488";

    fn at(rfc3339: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(rfc3339).unwrap().to_utc()
    }

    /// 10 s after the vector's timestamp: comfortably fresh.
    fn now() -> DateTime<Utc> {
        at("2026-01-01T00:00:10Z")
    }

    fn secrets(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn data_connection_vector_from_the_reference() {
        assert_eq!(sign_data_connection(SECRET, CALL_ID, TS), DATA_SIG);
        assert_eq!(
            verify_data_connection(&secrets(&[SECRET]), CALL_ID, TS, DATA_SIG, now()),
            Ok(())
        );
        // Hex case is not significant.
        let upper = DATA_SIG.to_uppercase();
        assert_eq!(
            verify_data_connection(&secrets(&[SECRET]), CALL_ID, TS, &upper, now()),
            Ok(())
        );
    }

    /// name, secrets, call id, timestamp, signature header, now, expected error.
    type DataCase<'a> = (
        &'a str,
        Vec<String>,
        &'a str,
        &'a str,
        &'a str,
        DateTime<Utc>,
        SignatureError,
    );

    /// name, body, timestamp, signature header, now, expected error.
    type WebhookCase<'a> = (
        &'a str,
        &'a [u8],
        &'a str,
        &'a str,
        DateTime<Utc>,
        SignatureError,
    );

    #[test]
    fn data_connection_mutations_fail() {
        let ok = secrets(&[SECRET]);
        let mut flipped = DATA_SIG.to_owned();
        flipped.replace_range(0..1, "5");
        let shifted_ts = "2026-01-01T00:00:01+00:00";
        let other_call = "550e8400-e29b-41d4-a716-446655440001";
        #[rustfmt::skip]
        let cases: Vec<DataCase> = vec![
            ("other call id", ok.clone(), other_call, TS, DATA_SIG, now(), SignatureError::Mismatch),
            ("timestamp shifted by 1 s", ok.clone(), CALL_ID, shifted_ts, DATA_SIG, now(), SignatureError::Mismatch),
            ("same instant, other spelling", ok.clone(), CALL_ID, "2026-01-01T00:00:00Z", DATA_SIG, now(), SignatureError::Mismatch),
            ("wrong secret", secrets(&["test-shared-secret-0124"]), CALL_ID, TS, DATA_SIG, now(), SignatureError::Mismatch),
            ("one hex digit changed", ok.clone(), CALL_ID, TS, &flipped, now(), SignatureError::Mismatch),
            ("truncated signature", ok.clone(), CALL_ID, TS, &DATA_SIG[..62], now(), SignatureError::Mismatch),
            ("not hex", ok.clone(), CALL_ID, TS, "not-a-signature", now(), SignatureError::Mismatch),
            ("61 s old", ok.clone(), CALL_ID, TS, DATA_SIG, at("2026-01-01T00:01:01Z"), SignatureError::Stale { age_secs: 61 }),
            ("a day old", ok.clone(), CALL_ID, TS, DATA_SIG, at("2026-01-02T00:00:00Z"), SignatureError::Stale { age_secs: 86_400 }),
            ("61 s ahead", ok.clone(), CALL_ID, TS, DATA_SIG, at("2025-12-31T23:58:59Z"), SignatureError::FromFuture { ahead_secs: 61 }),
            ("empty header", ok.clone(), CALL_ID, TS, "", now(), SignatureError::MissingHeader(headers::SIGNATURE)),
            ("only separators", ok.clone(), CALL_ID, TS, " , ,", now(), SignatureError::MissingHeader(headers::SIGNATURE)),
            ("empty timestamp", ok.clone(), CALL_ID, "", DATA_SIG, now(), SignatureError::MissingHeader(headers::SIGNATURE_TIMESTAMP)),
            ("empty call id", ok.clone(), "", TS, DATA_SIG, now(), SignatureError::MissingHeader(headers::CALL_ID)),
            ("unparseable timestamp", ok.clone(), CALL_ID, "yesterday", DATA_SIG, now(), SignatureError::InvalidTimestamp("yesterday".into())),
            ("unix seconds", ok.clone(), CALL_ID, "1767225600", DATA_SIG, now(), SignatureError::InvalidTimestamp("1767225600".into())),
            ("no secrets", vec![], CALL_ID, TS, DATA_SIG, now(), SignatureError::NoSecrets),
            ("only an empty secret", secrets(&[""]), CALL_ID, TS, DATA_SIG, now(), SignatureError::NoSecrets),
        ];
        for (name, secrets, call_id, ts, header, now, want) in cases {
            assert_eq!(
                verify_data_connection(&secrets, call_id, ts, header, now),
                Err(want),
                "{name}"
            );
        }
    }

    #[test]
    fn freshness_window_is_inclusive_at_sixty_seconds_both_ways() {
        let s = secrets(&[SECRET]);
        for now in [at("2026-01-01T00:01:00Z"), at("2025-12-31T23:59:00Z")] {
            assert_eq!(
                verify_data_connection(&s, CALL_ID, TS, DATA_SIG, now),
                Ok(())
            );
        }
        let just_over = at("2026-01-01T00:01:00.001Z");
        assert!(verify_data_connection(&s, CALL_ID, TS, DATA_SIG, just_over).is_err());
    }

    #[test]
    fn any_listed_signature_may_match_any_secret() {
        let old = "old-secret-0000000000";
        let new = "new-secret-1111111111";
        let sig_old = sign_data_connection(old, CALL_ID, TS);
        let sig_new = sign_data_connection(new, CALL_ID, TS);
        // Ultravox lists one signature per secret it has; we accept if we share any of them.
        let header = format!("{sig_old},{sig_new}");
        for ours in [
            vec![old],
            vec![new],
            vec![new, old],
            vec!["unrelated-secret-xx", new],
        ] {
            assert_eq!(
                verify_data_connection(&secrets(&ours), CALL_ID, TS, &header, now()),
                Ok(()),
                "{ours:?}"
            );
        }
        // Whitespace and empty entries in the list are tolerated, wherever the match is.
        for header in [
            format!(" {sig_old} , {sig_new} "),
            format!("garbage,\t{sig_new}"),
            format!(",{sig_new},"),
        ] {
            assert_eq!(
                verify_data_connection(&secrets(&[new]), CALL_ID, TS, &header, now()),
                Ok(()),
                "{header:?}"
            );
        }
        // Neither listed signature is ours.
        assert_eq!(
            verify_data_connection(
                &secrets(&["third-secret-2222222222"]),
                CALL_ID,
                TS,
                &header,
                now()
            ),
            Err(SignatureError::Mismatch)
        );
        // An empty secret next to a real one is skipped, not used as a key anybody can sign with.
        let forged = sign_data_connection("", CALL_ID, TS);
        assert_eq!(
            verify_data_connection(&secrets(&["", new]), CALL_ID, TS, &forged, now()),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn other_iso_8601_spellings_of_the_timestamp_verify() {
        for ts in [
            "2026-01-01T00:00:00Z",
            "2026-01-01T00:00:00.123456Z",
            "2026-01-01T00:00:00.5+00:00",
            "2026-01-01T01:00:00+01:00",
            "2026-01-01T00:00:00",
        ] {
            let sig = sign_data_connection(SECRET, CALL_ID, ts);
            assert_eq!(
                verify_data_connection(&secrets(&[SECRET]), CALL_ID, ts, &sig, now()),
                Ok(()),
                "{ts}"
            );
            // The offset is honoured: the same text 2 minutes later is stale.
            assert!(matches!(
                verify_data_connection(
                    &secrets(&[SECRET]),
                    CALL_ID,
                    ts,
                    &sig,
                    at("2026-01-01T00:02:00Z")
                ),
                Err(SignatureError::Stale { .. })
            ));
        }
    }

    #[test]
    fn webhook_vector_and_mutations() {
        let s = secrets(&[SECRET]);
        let body = WEBHOOK_BODY.as_bytes();
        assert_eq!(sign_webhook(SECRET, body, TS), WEBHOOK_SIG);
        assert_eq!(verify_webhook(&s, body, TS, WEBHOOK_SIG, now()), Ok(()));
        assert_eq!(
            verify_webhook(&s, body, TS, &format!("deadbeef, {WEBHOOK_SIG}"), now()),
            Ok(())
        );

        let reformatted = WEBHOOK_BODY.replace(':', ": ");
        #[rustfmt::skip]
        let cases: Vec<WebhookCase> = vec![
            ("body re-serialized", reformatted.as_bytes(), TS, WEBHOOK_SIG, now(), SignatureError::Mismatch),
            ("empty body", b"", TS, WEBHOOK_SIG, now(), SignatureError::Mismatch),
            ("data-connection signature", body, TS, DATA_SIG, now(), SignatureError::Mismatch),
            ("other timestamp", body, "2026-01-01T00:00:01+00:00", WEBHOOK_SIG, now(), SignatureError::Mismatch),
            ("stale", body, TS, WEBHOOK_SIG, at("2026-01-01T00:05:00Z"), SignatureError::Stale { age_secs: 300 }),
            ("no signature", body, TS, "", now(), SignatureError::MissingHeader(headers::WEBHOOK_SIGNATURE)),
            ("no timestamp", body, "", WEBHOOK_SIG, now(), SignatureError::MissingHeader(headers::WEBHOOK_TIMESTAMP)),
        ];
        for (name, body, ts, header, now, want) in cases {
            assert_eq!(
                verify_webhook(&s, body, ts, header, now),
                Err(want),
                "{name}"
            );
        }
        assert_eq!(
            verify_webhook(&secrets(&["other"]), body, TS, WEBHOOK_SIG, now()),
            Err(SignatureError::Mismatch)
        );
    }
}
