//! `X-Twilio-Signature` (reference §4.5): computing Twilio's request signature and checking it,
//! for form-encoded and JSON bodies, with the URL spellings the official libraries accept.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::url::split_url;

/// Name of the header carrying Twilio's request signature.
pub(crate) const SIGNATURE_HEADER: &str = "X-Twilio-Signature";

/// Query parameter Twilio adds to the URL of a request with a JSON body.
pub(crate) const BODY_SHA256_PARAM: &str = "bodySHA256";

/// The string Twilio signs: the URL, then every parameter name followed by its value, names in
/// byte order; a name sent several times contributes each distinct value once, in byte order.
pub(crate) fn string_to_sign(url: &str, params: &[(String, String)]) -> String {
    let mut by_name: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (name, value) in params {
        by_name.entry(name).or_default().insert(value);
    }
    let mut signed = url.to_owned();
    for (name, values) in by_name {
        for value in values {
            signed.push_str(name);
            signed.push_str(value);
        }
    }
    signed
}

/// The `X-Twilio-Signature` Twilio sends for a request to exactly `url` (scheme, host, port,
/// path and query as requested) with the decoded form parameters `params`: Base64 of
/// HMAC-SHA1 keyed with the account's auth token.
pub fn compute_signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(auth_token.as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(string_to_sign(url, params).as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Whether `signature` is Twilio's signature of a form-encoded request to `url` with the
/// decoded parameters `params` (all of them: never filter Twilio's parameters first).
///
/// Like the official libraries, this accepts the URL without its port or with its port (the
/// scheme's default one added when it has none; Twilio has signed both ways, and the URL as
/// given is always one of the two), and, like the Node library, with `'` in the query string
/// written as `%27` or the other way round. The comparison is constant-time.
/// An empty or missing signature never validates.
pub(crate) fn validate_signature(
    auth_token: &str,
    url: &str,
    params: &[(String, String)],
    signature: &str,
) -> bool {
    candidate_urls(url).iter().any(|candidate| {
        let expected = compute_signature(auth_token, candidate, params);
        bool::from(expected.as_bytes().ct_eq(signature.as_bytes()))
    })
}

/// Lowercase hex SHA-256 of a raw request body, as Twilio puts it in `bodySHA256`.
pub(crate) fn body_sha256(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

/// Whether a request with a JSON body is authentic: `url` must carry `bodySHA256` equal to the
/// SHA-256 of the raw `body`, and `signature` must sign `url` with no parameters.
#[cfg_attr(not(test), expect(dead_code, reason = "no JSON-body webhook yet"))]
pub(crate) fn validate_json_signature(
    auth_token: &str,
    url: &str,
    body: &[u8],
    signature: &str,
) -> bool {
    let Some(claimed) = query_param(url, BODY_SHA256_PARAM) else {
        return false;
    };
    let body_matches = bool::from(body_sha256(body).as_bytes().ct_eq(claimed.as_bytes()));
    let signature_matches = validate_signature(auth_token, url, &[], signature);
    body_matches && signature_matches
}

/// The first value of the query parameter `name` in `url`, percent-decoded.
fn query_param(url: &str, name: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    let query = query
        .split_once('#')
        .map_or(query, |(query, _fragment)| query);
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query).ok()?;
    pairs
        .into_iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value)
}

/// Every spelling of `url` Twilio may have signed: without port and with the default port,
/// each with the query's `'` as is, as `%27`, and `%27` as `'`.
fn candidate_urls(url: &str) -> Vec<String> {
    let mut candidates: Vec<String> = Vec::new();
    for base in [without_port(url), with_port(url)] {
        for candidate in [
            replace_in_query(&base, "'", "%27"),
            replace_in_query(&base, "%27", "'"),
            base,
        ] {
            if !candidates.contains(&candidate) {
                candidates.push(candidate);
            }
        }
    }
    candidates
}

fn replace_in_query(url: &str, from: &str, to: &str) -> String {
    match url.split_once('?') {
        Some((head, query)) => format!("{head}?{}", query.replace(from, to)),
        None => url.to_owned(),
    }
}

/// `url` with any port removed.
fn without_port(url: &str) -> String {
    match split_url(url) {
        Some(p) => format!("{}{}{}{}", p.scheme, p.user_info, p.host, p.rest),
        None => url.to_owned(),
    }
}

/// `url` with the scheme's default port (443 for https, else 80) added when it has none.
fn with_port(url: &str) -> String {
    match split_url(url) {
        Some(p) if p.port.is_empty() => {
            let port = if p.scheme.eq_ignore_ascii_case("https://") {
                ":443"
            } else {
                ":80"
            };
            format!("{}{}{}{port}{}", p.scheme, p.user_info, p.host, p.rest)
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::twilio::form_params;
    use crate::protocol::twilio::test_support::{pairs, webhook_fixtures};

    // ---- signatures: official vectors, reference §4.5 (auth token 12345) -------------------

    const TOKEN: &str = "12345";
    const T1_URL: &str = "https://mycompany.com/myapp.php?foo=1&bar=2";
    const T1_SIGNATURE: &str = "RSOYDt4T1cUTdK1PDd93/VVr8B8=";
    const BODY: &str = r#"{"property": "value", "boolean": true}"#;
    const BODY_HASH: &str = "0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620";

    fn t1_params() -> Vec<(String, String)> {
        pairs(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675309"),
            ("Digits", "1234"),
            ("From", "+14158675309"),
            ("To", "+18005551212"),
        ])
    }

    /// `params` with the value of `name` replaced.
    fn with_value(params: &[(String, String)], name: &str, value: &str) -> Vec<(String, String)> {
        params
            .iter()
            .map(|(n, v)| {
                let v = if n == name { value } else { v.as_str() };
                (n.clone(), v.to_string())
            })
            .collect()
    }

    #[test]
    fn t1_signature_and_its_mutations() {
        let params = t1_params();
        assert_eq!(compute_signature(TOKEN, T1_URL, &params), T1_SIGNATURE);
        assert!(validate_signature(TOKEN, T1_URL, &params, T1_SIGNATURE));
        // Parameter order on the wire does not matter.
        let mut reversed = params.clone();
        reversed.reverse();
        assert!(validate_signature(TOKEN, T1_URL, &reversed, T1_SIGNATURE));

        let tampered = with_value(&params, "Digits", "1235");
        assert!(!validate_signature(TOKEN, T1_URL, &tampered, T1_SIGNATURE));
        assert!(!validate_signature("12346", T1_URL, &params, T1_SIGNATURE));
        let missing: Vec<_> = params.iter().filter(|(n, _)| n != "To").cloned().collect();
        assert!(!validate_signature(TOKEN, T1_URL, &missing, T1_SIGNATURE));
        let mut extra = params.clone();
        extra.push(("Extra".into(), "1".into()));
        assert!(!validate_signature(TOKEN, T1_URL, &extra, T1_SIGNATURE));
        let other_path = "https://mycompany.com/other.php?foo=1&bar=2";
        assert!(!validate_signature(
            TOKEN,
            other_path,
            &params,
            T1_SIGNATURE
        ));
        let reordered_query = "https://mycompany.com/myapp.php?bar=2&foo=1";
        assert!(!validate_signature(
            TOKEN,
            reordered_query,
            &params,
            T1_SIGNATURE
        ));
    }

    #[test]
    fn t2_signed_with_default_https_port() {
        let url = "https://mycompany.com:443/myapp.php?foo=1&bar=2";
        let signature = "kvajT1Ptam85bY51eRf/AJRuM3w=";
        let params = t1_params();
        assert_eq!(compute_signature(TOKEN, url, &params), signature);
        assert!(validate_signature(TOKEN, url, &params, signature));
        assert!(validate_signature(TOKEN, T1_URL, &params, signature));
        let wrong_port = "https://mycompany.com:8443/myapp.php?foo=1&bar=2";
        assert!(!validate_signature(TOKEN, wrong_port, &params, signature));
        let http = "http://mycompany.com/myapp.php?foo=1&bar=2";
        assert!(!validate_signature(TOKEN, http, &params, signature));
    }

    #[test]
    fn t3_signed_with_default_http_port() {
        let url = "http://mycompany.com:80/myapp.php?foo=1&bar=2";
        let signature = "0ZXoZLH/DfblKGATFgpif+LLRf4=";
        let params = t1_params();
        assert_eq!(compute_signature(TOKEN, url, &params), signature);
        let without_port = "http://mycompany.com/myapp.php?foo=1&bar=2";
        assert!(validate_signature(TOKEN, without_port, &params, signature));
        assert!(validate_signature(TOKEN, url, &params, signature));
        // https's default port is 443, not 80.
        let https = "https://mycompany.com/myapp.php?foo=1&bar=2";
        assert!(!validate_signature(TOKEN, https, &params, signature));
    }

    #[test]
    fn t4_signed_with_custom_port() {
        let url = "http://mycompany.com:1234/myapp.php?foo=1&bar=2";
        let signature = "Zmvh+3yNM1Phv2jhDCwEM3q5ebU=";
        let params = t1_params();
        assert_eq!(compute_signature(TOKEN, url, &params), signature);
        assert!(validate_signature(TOKEN, url, &params, signature));
        let other_port = "http://mycompany.com:1235/myapp.php?foo=1&bar=2";
        assert!(!validate_signature(TOKEN, other_port, &params, signature));
        let no_port = "http://mycompany.com/myapp.php?foo=1&bar=2";
        assert!(!validate_signature(TOKEN, no_port, &params, signature));
    }

    #[test]
    fn t5_custom_port_validates_port_less_signature() {
        let url = "https://mycompany.com:1234/myapp.php?foo=1&bar=2";
        let params = t1_params();
        assert!(validate_signature(TOKEN, url, &params, T1_SIGNATURE));
        let tampered = with_value(&params, "From", "+14158675300");
        assert!(!validate_signature(TOKEN, url, &tampered, T1_SIGNATURE));
    }

    #[test]
    fn t6_repeated_name_counts_each_distinct_value_once_sorted() {
        let signature = "IK+Dwps556ElfBT0I3Rgjkr1wJU=";
        let params = pairs(&[
            ("Sid", "CA123"),
            ("SidAccount", "AC123"),
            ("Digits", "5678"),
            ("Digits", "1234"),
            ("Digits", "1234"),
        ]);
        assert_eq!(compute_signature(TOKEN, T1_URL, &params), signature);
        let deduplicated = pairs(&[
            ("Digits", "1234"),
            ("Sid", "CA123"),
            ("Digits", "5678"),
            ("SidAccount", "AC123"),
        ]);
        assert!(validate_signature(TOKEN, T1_URL, &deduplicated, signature));
        assert_eq!(
            string_to_sign("", &params),
            "Digits1234Digits5678SidCA123SidAccountAC123"
        );
        let mut more = params.clone();
        more.push(("Digits".into(), "9999".into()));
        assert!(!validate_signature(TOKEN, T1_URL, &more, signature));
    }

    #[test]
    fn t7_repeated_name_in_either_order() {
        let signature = "83O6e2vORAoJHUNzJjDWN1jz+BA=";
        let forward = pairs(&[
            ("MessagingBinding.Address", "+1325xxxxxxx"),
            ("MessagingBinding.Address", "+1415xxxxxxx"),
        ]);
        let backward: Vec<_> = forward.iter().rev().cloned().collect();
        assert!(validate_signature(TOKEN, T1_URL, &forward, signature));
        assert!(validate_signature(TOKEN, T1_URL, &backward, signature));
        let one = pairs(&[("MessagingBinding.Address", "+1325xxxxxxx")]);
        assert!(!validate_signature(TOKEN, T1_URL, &one, signature));
    }

    #[test]
    fn t9_credentials_in_url_stay_signed() {
        let url = "https://user@mycompany.com/myapp.php?foo=1&bar=2";
        let signature = "2YRLlVAflCqxaNicjMpJcSTgzSs=";
        let params = t1_params();
        assert_eq!(compute_signature(TOKEN, url, &params), signature);
        let with_port = "https://user@mycompany.com:443/myapp.php?foo=1&bar=2";
        assert!(validate_signature(TOKEN, with_port, &params, signature));
        assert!(!validate_signature(TOKEN, T1_URL, &params, signature));
    }

    #[test]
    fn t11_body_hash() {
        assert_eq!(body_sha256(BODY.as_bytes()), BODY_HASH);
        assert_ne!(
            body_sha256(b"{\"property\": \"value\", \"boolean\": false}"),
            BODY_HASH
        );
        // Twilio's JSON sample (reference §4.5).
        assert_eq!(
            body_sha256(br#"{"CallSid":"CA1234567890ABCDE","Caller":"+12349013030"}"#),
            "5ccde7145dfb8f56479710896586cb9d5911809d83afbe34627818790db0aec9"
        );
    }

    #[test]
    fn t12_json_body_with_other_query_params() {
        let url = format!("{T1_URL}&bodySHA256={BODY_HASH}");
        let signature = "a9nBmqA0ju/hNViExpshrM61xv4=";
        assert_eq!(compute_signature(TOKEN, &url, &[]), signature);
        assert!(validate_json_signature(
            TOKEN,
            &url,
            BODY.as_bytes(),
            signature
        ));
        let tampered_body = br#"{"property": "value", "boolean": false}"#;
        assert!(!validate_json_signature(
            TOKEN,
            &url,
            tampered_body,
            signature
        ));
        assert!(!validate_json_signature(
            "54321",
            &url,
            BODY.as_bytes(),
            signature
        ));
        assert!(!validate_json_signature(
            TOKEN,
            &url,
            BODY.as_bytes(),
            T1_SIGNATURE
        ));
    }

    #[test]
    fn t13_json_body_hash_only_query_param() {
        let url = format!("https://mycompany.com/myapp.php?bodySHA256={BODY_HASH}");
        let signature = "y77kIzt2vzLz71DgmJGsen2scGs=";
        assert_eq!(compute_signature(TOKEN, &url, &[]), signature);
        assert!(validate_json_signature(
            TOKEN,
            &url,
            BODY.as_bytes(),
            signature
        ));
        let with_port = format!("https://mycompany.com:443/myapp.php?bodySHA256={BODY_HASH}");
        assert!(validate_json_signature(
            TOKEN,
            &with_port,
            BODY.as_bytes(),
            signature
        ));
        assert!(!validate_json_signature(TOKEN, &url, b"{}", signature));
    }

    #[test]
    fn json_body_without_body_hash_never_validates() {
        // Signed correctly, but nothing ties the body to the signature.
        let signature = compute_signature(TOKEN, T1_URL, &[]);
        assert!(validate_signature(TOKEN, T1_URL, &[], &signature));
        assert!(!validate_json_signature(
            TOKEN,
            T1_URL,
            BODY.as_bytes(),
            &signature
        ));
    }

    #[test]
    fn t15_docs_example_string_to_sign() {
        let params = pairs(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+12349013030"),
            ("Digits", "1234"),
            ("From", "+12349013030"),
            ("To", "+18005551212"),
        ]);
        assert_eq!(
            string_to_sign(T1_URL, &params),
            "https://mycompany.com/myapp.php?foo=1&bar=2CallSidCA1234567890ABCDECaller+12349013030\
             Digits1234From+12349013030To+18005551212"
        );
        let signature = "0/KCTR6DLpKmkAf8muzZqo1nDgQ=";
        assert_eq!(compute_signature(TOKEN, T1_URL, &params), signature);
        let tampered = with_value(&params, "Caller", "+12349013031");
        assert!(!validate_signature(TOKEN, T1_URL, &tampered, signature));
    }

    #[test]
    fn n1_changed_query_value_fails() {
        let signature = compute_signature("s3cr3t", "https://example.com/path?test=param", &[]);
        assert_eq!(signature, "loLgTitFAoWx57yy5oEU4Hlddzw=");
        let target = "https://example.com/path?test=param2";
        assert!(!validate_signature("s3cr3t", target, &[], &signature));
        assert!(validate_signature(
            "s3cr3t",
            "https://example.com/path?test=param",
            &[],
            &signature
        ));
    }

    #[test]
    fn n2_single_quote_and_percent_27_are_interchangeable_in_the_query() {
        let raw = "https://example.com/path?test=param'WithQuote";
        let escaped = "https://example.com/path?test=param%27WithQuote";
        // Both values as computed by the official twilio 9.13.0 package.
        let signed_raw = "GfI7onHX/KQ2k1oVS3cUTVk4IEw=";
        let signed_escaped = "HkuXLxVQ7zHv9LmGpzlLuGaxhJY=";
        assert_eq!(compute_signature("s3cr3t", raw, &[]), signed_raw);
        assert_eq!(compute_signature("s3cr3t", escaped, &[]), signed_escaped);
        for signature in [signed_raw, signed_escaped] {
            for url in [raw, escaped] {
                assert!(
                    validate_signature("s3cr3t", url, &[], signature),
                    "{url} {signature}"
                );
            }
            let other = "https://example.com/path?test=param%22WithQuote";
            assert!(!validate_signature("s3cr3t", other, &[], signature));
        }
        // Only the query string is re-spelled, never the path.
        let in_path = compute_signature("s3cr3t", "https://example.com/it's", &[]);
        assert!(!validate_signature(
            "s3cr3t",
            "https://example.com/it%27s",
            &[],
            &in_path
        ));
    }

    #[test]
    fn n3_wrong_or_missing_signature_fails() {
        let params = t1_params();
        assert!(!validate_signature(
            TOKEN,
            T1_URL,
            &params,
            "WRONG_SIGNATURE"
        ));
        assert!(!validate_signature(TOKEN, T1_URL, &params, ""));
        // A prefix of the right signature is not enough.
        assert!(!validate_signature(
            TOKEN,
            T1_URL,
            &params,
            &T1_SIGNATURE[..27]
        ));
        assert!(!validate_json_signature(TOKEN, T1_URL, b"", ""));
    }

    #[test]
    fn url_port_variants_keep_everything_else() {
        assert_eq!(
            without_port("https://u:p@host:8443/a?b=:1"),
            "https://u:p@host/a?b=:1"
        );
        assert_eq!(
            with_port("https://u:p@host/a?b=:1"),
            "https://u:p@host:443/a?b=:1"
        );
        assert_eq!(with_port("HTTP://host?x"), "HTTP://host:80?x");
        assert_eq!(without_port("http://[::1]:8080/x"), "http://[::1]/x");
        assert_eq!(with_port("https://[::1]/x"), "https://[::1]:443/x");
        assert_eq!(with_port("https://host:1234/x"), "https://host:1234/x");
        assert_eq!(without_port("not a url"), "not a url");
        assert_eq!(with_port("/relative?a=1"), "/relative?a=1");
    }

    #[test]
    fn section_6_4_fixtures_are_signed_over_decoded_values() {
        let fixtures = webhook_fixtures();
        assert_eq!(fixtures.len(), 3);
        for fixture in fixtures {
            let params = form_params(fixture.body.as_bytes()).unwrap();
            let (token, url, signature) = (&fixture.auth_token, &fixture.url, &fixture.signature);
            assert_eq!(
                &compute_signature(token, url, &params),
                signature,
                "{}",
                fixture.name
            );
            assert!(validate_signature(token, url, &params, signature));

            let tampered = with_value(&params, "CallSid", "CA11111111111111111111111111111112");
            assert!(!validate_signature(token, url, &tampered, signature));
            let other_url = url.replace("example.com", "example.org");
            assert!(!validate_signature(token, &other_url, &params, signature));
            // Signing the still-encoded values (`%2B`, `+`) gives another signature.
            let raw: Vec<(String, String)> = fixture
                .body
                .split('&')
                .map(|pair| {
                    let (name, value) = pair.split_once('=').unwrap();
                    (name.to_string(), value.to_string())
                })
                .collect();
            assert_ne!(&compute_signature(token, url, &raw), signature);
        }
    }
}
