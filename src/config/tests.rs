//! Tests of the whole assembly: a file with every section, `${NAME}` references, and the
//! problems of several sections listed at once.

use secrecy::ExposeSecret;

use super::*;

fn process() -> ProcessSettings {
    ProcessSettings {
        database_url: "sqlite://x.db".into(),
        bind: "127.0.0.1".parse().unwrap(),
        port: 0,
        config_path: None,
        database_max_connections: 16,
        database_worker_connections: 4,
    }
}

const GOOD: &str = r#"
        [[tenants]]
        id = "riverside"
        name = "Riverside Emergency Vet"
        numbers = ["+15083728299"]
        [tenants.jambonz]
        username = "riverside"
        password = "${PASS}"
        [tenants.transfer]
        primary = "+15557654321"
        secondary = "5557654322"
        [tenants.ultravox]
        api_key = "k"
        system_prompt = "You are a triage nurse."
    "#;

#[test]
fn accepts_a_good_file_and_resolves_secrets_from_the_environment() {
    let env = |n: &str| (n == "PASS").then(|| "a-long-password".to_string());
    let cfg = Config::build(&process(), Some((GOOD, Path::new("t.toml"))), &env).unwrap();
    let t = &cfg.tenants[0];
    assert_eq!(
        t.jambonz.as_ref().unwrap().password.expose_secret(),
        "a-long-password"
    );
    assert_eq!(
        t.transfer.secondary.as_ref().unwrap().as_str(),
        "+15557654322"
    );
    assert_eq!(t.transfer.ring_timeout_secs, 25);
    assert_eq!(cfg.limits, Limits::default());
}

#[test]
fn delivery_defaults_and_the_original_workers_environment_variables() {
    let env = |n: &str| match n {
        "PASS" => Some("a-long-password".to_string()),
        "FRONTEND_CALLBACK_API_URL" => Some("https://clinic.example.org/api/callbacks".into()),
        "FRONTEND_API_KEY" => Some("frontend-key".into()),
        "CALLBACK_POLL_INTERVAL_MS" => Some("30000".into()),
        "CALLBACK_BATCH_SIZE" => Some("10".into()),
        "LIFELINE_IN_PROCESS_WORKER" => Some("false".into()),
        _ => None,
    };
    let cfg = Config::build(&process(), Some((GOOD, Path::new("t.toml"))), &env).unwrap();
    let frontend = cfg.delivery.frontend.as_ref().unwrap();
    assert_eq!(frontend.url, "https://clinic.example.org/api/callbacks");
    assert_eq!(
        frontend.api_key.as_ref().map(|k| k.expose_secret()),
        Some("frontend-key")
    );
    assert!(frontend.signing_secret.is_none());
    assert_eq!(cfg.worker.poll_interval, Duration::from_secs(30));
    assert_eq!(cfg.worker.batch_size, 10);
    assert!(!cfg.worker.in_process);
    // 5, 15 and 60 minutes, then a dead letter.
    assert_eq!(
        cfg.delivery.retry_schedule,
        [300, 900, 3600].map(Duration::from_secs)
    );
    assert_eq!(cfg.delivery.jitter, 0.1);
    assert_eq!(cfg.worker.lease, Duration::from_secs(60));
    assert!(cfg.tenants[0].alerts.sms.is_empty());

    // Without anything: no frontend (requests wait for staff), the worker runs in-process.
    let env = |n: &str| (n == "PASS").then(|| "a-long-password".to_string());
    let cfg = Config::build(&process(), Some((GOOD, Path::new("t.toml"))), &env).unwrap();
    assert!(cfg.delivery.frontend.is_none());
    assert!(cfg.worker.in_process);
    assert_eq!(cfg.worker.batch_size, 50);
}

const HILLSIDE: &str = r#"
        [[tenants]]
        id = "hillside"
        name = "Hillside"
        [tenants.transfer]
        primary = "+15557650000"
        [tenants.ultravox]
        api_key = "k"
        agent_id = "a"
    "#;

#[test]
fn delivery_and_alert_problems_are_listed() {
    let text = format!(
        r#"{GOOD}{HILLSIDE}
        [tenants.frontend]
        url = "ftp://hillside"
        signing_secret = "short"
        [tenants.alerts]
        sms = ["12", "+15557770001"]
        [delivery]
        retry_schedule_secs = []
        jitter_percent = 80
        [worker]
        lease_secs = 8
        batch_size = 0
        "#
    );
    let env = |n: &str| match n {
        "PASS" => Some("a-long-password".to_string()),
        "CALLBACK_POLL_INTERVAL_MS" => Some("soon".into()),
        _ => None,
    };
    let err = Config::build(&process(), Some((&text, Path::new("t.toml"))), &env).unwrap_err();
    let text = err.to_string();
    for needle in [
        r#"tenant "hillside": frontend.url must be an http(s) URL"#,
        "frontend.signing_secret must be at least 16",
        r#"alerts.sms "12""#,
        "delivery.retry_schedule_secs must list 1 to 20 waits",
        "delivery.jitter_percent must be at most 50",
        "worker.batch_size must be between 1 and 1000",
        "CALLBACK_POLL_INTERVAL_MS must be a whole number",
        "worker.lease_secs (8) must exceed delivery.timeout_ms",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}

#[test]
fn every_tenant_needs_a_frontend_once_one_has_one_and_sms_needs_twilio() {
    let text = format!(
        r#"{GOOD}{HILLSIDE}
        [tenants.frontend]
        url = "https://hillside.example.org/cb"
        [tenants.alerts]
        sms = ["+15557770001"]
        "#
    );
    let env = |n: &str| (n == "PASS").then(|| "a-long-password".to_string());
    let err = Config::build(&process(), Some((&text, Path::new("t.toml"))), &env).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(r#"tenant "riverside": no frontend for its callback requests"#),
        "{text}"
    );
    assert!(
        text.contains(r#"tenant "hillside": SMS alerts need [twilio] and alerts.sms_from"#),
        "{text}"
    );
    assert_eq!(err.0.len(), 2, "{text}");
}

#[test]
fn lists_every_problem_at_once() {
    let bad = r#"
            [limits]
            tool_timeout_ms = 50
            [[tenants]]
            id = "Bad Id"
            numbers = ["12"]
            [tenants.jambonz]
            username = "u"
            password = "${MISSING}"
            [tenants.transfer]
            primary = "not a number"
            ring_timeout_secs = 500
            [tenants.ultravox]
            api_key = ""
        "#;
    let err = Config::build(
        &ProcessSettings {
            database_url: "mysql://x".into(),
            ..process()
        },
        Some((bad, Path::new("bad.toml"))),
        &|_| None,
    )
    .unwrap_err();
    let text = err.to_string();
    for needle in [
        "environment variable MISSING is not set",
        "DATABASE_URL must start with",
        "tool_timeout_ms",
        "id must be non-empty",
        "name is required",
        "number \"12\"",
        "password must be at least 12",
        "transfer.primary",
        "ring_timeout_secs",
        "api_key is required",
        "agent_id or ultravox.system_prompt",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    assert!(err.0.len() >= 11, "{text}");
}

#[test]
fn twilio_needs_a_public_url_valid_secrets_and_a_deadline_inside_the_tool_timeout() {
    let text = format!(
        "{GOOD}\n[twilio]\naccount_sid = \"ACx\"\nauth_token = \"\"\nupdate_deadline_ms = 1900\n\
         [ultravox]\ndata_connection_secrets = [\"short\"]\ntool_api_keys = [\"k\"]\n"
    );
    let env = |n: &str| (n == "PASS").then(|| "a-long-password".to_string());
    let err = Config::build(&process(), Some((&text, Path::new("t.toml"))), &env).unwrap_err();
    let text = err.to_string();
    for needle in [
        "server.public_url is required",
        "twilio.account_sid",
        "twilio.auth_token",
        "update_deadline_ms (1900)",
        "data_connection_secrets: each secret must be 16 to 127",
        "tool_api_keys: each key must be at least 16",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }

    let good = format!(
        "[server]\npublic_url = \"https://lifeline.example.com/\"\n\
         [twilio]\naccount_sid = \"AC00000000000000000000000000000000\"\nauth_token = \"t\"\n\
         [ultravox]\ndata_connection_secrets = [\"0123456789abcdef\"]\n{GOOD}"
    );
    let cfg = Config::build(&process(), Some((&good, Path::new("t.toml"))), &env).unwrap();
    assert_eq!(
        cfg.public_url.as_deref(),
        Some("https://lifeline.example.com")
    );
    assert_eq!(
        cfg.twilio.as_ref().unwrap().update_deadline,
        Duration::from_millis(1500)
    );
    assert_eq!(
        cfg.tenant_by_number("(508) 372-8299").unwrap().id,
        "riverside"
    );
    assert!(cfg.tenant_by_number("+15550000000").is_none());
}

#[test]
fn unknown_keys_are_refused() {
    let err = Config::build(
        &process(),
        Some(("[limits]\ntool_timeout = 5\n", Path::new("x.toml"))),
        &|_| None,
    )
    .unwrap_err();
    assert!(err.to_string().contains("unknown field"), "{err}");
}

#[test]
fn a_demo_section_makes_a_staff_account_only_outside_production_settings() {
    let env = |n: &str| (n == "PASS").then(|| "a-long-password".to_string());
    let demo = "[demo]\nstaff_username = \"demo\"\nstaff_password = \"demo-password-123\"\n";
    let cfg = Config::build(
        &process(),
        Some((&format!("{demo}{GOOD}"), Path::new("t.toml"))),
        &env,
    )
    .unwrap();
    assert_eq!(cfg.demo.as_ref().unwrap().staff_username, "demo");
    let account = cfg
        .admin
        .staff
        .iter()
        .find(|s| s.username == "demo")
        .unwrap();
    assert_eq!(account.tenant, None, "every clinic");
    assert!(crate::password::verify_password(
        "demo-password-123",
        &account.password_hash
    ));

    // No [demo], no account and no demo.
    let cfg = Config::build(&process(), Some((GOOD, Path::new("t.toml"))), &env).unwrap();
    assert!(cfg.demo.is_none() && cfg.admin.staff.is_empty());

    let public = format!("[server]\npublic_url = \"https://lifeline.example.com\"\n{demo}{GOOD}");
    let err = Config::build(&process(), Some((&public, Path::new("t.toml"))), &env)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("[demo] cannot be used with an https server.public_url"),
        "{err}"
    );
    let weak = format!("[demo]\nstaff_username = \"demo\"\nstaff_password = \"short\"\n{GOOD}");
    let err = Config::build(&process(), Some((&weak, Path::new("t.toml"))), &env)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("demo.staff_password must be at least 12"),
        "{err}"
    );
}

#[test]
fn debug_output_shows_no_secret() {
    const DATABASE_URL: &str = "postgres://lifeline:db-password-7f3a@db:5432/lifeline";
    let text = r#"
        [server]
        public_url = "https://lifeline.example.com"
        [twilio]
        account_sid = "AC00000000000000000000000000000000"
        auth_token = "twilio-auth-token-7f3a"
        [ultravox]
        data_connection_secrets = ["data-connection-secret-7f3a"]
        tool_api_keys = ["global-tool-api-key-7f3a"]
        [delivery]
        frontend_url = "https://frontend.example.org/callbacks"
        api_key = "delivery-api-key-7f3a"
        signing_secret = "delivery-signing-secret-7f3a"
        [ops]
        metrics_token = "metrics-token-7f3a-0123"
        [[tenants]]
        id = "riverside"
        name = "Riverside Emergency Vet"
        numbers = ["+15083728299"]
        tool_api_key = "tenant-tool-api-key-7f3a"
        [tenants.jambonz]
        username = "riverside"
        password = "${JAMBONZ_PASSWORD}"
        [tenants.transfer]
        primary = "+15557654321"
        [tenants.ultravox]
        api_key = "ultravox-api-key-7f3a"
        system_prompt = "You are a triage nurse."
        [tenants.frontend]
        url = "https://riverside.example.org/callbacks"
        api_key = "tenant-frontend-key-7f3a"
        signing_secret = "tenant-signing-secret-7f3a"
    "#;
    let process = ProcessSettings {
        database_url: DATABASE_URL.into(),
        ..process()
    };
    let env = |n: &str| (n == "JAMBONZ_PASSWORD").then(|| "jambonz-password-7f3a".to_string());
    let cfg = Config::build(&process, Some((text, Path::new("t.toml"))), &env).unwrap();

    // Every secret was read (so its absence below means it is hidden, not missing)…
    let tenant = &cfg.tenants[0];
    let twilio = cfg.twilio.as_ref().unwrap();
    let delivery = cfg.delivery.frontend.as_ref().unwrap();
    let frontend = tenant.frontend.as_ref().unwrap();
    let held = [
        cfg.database_url.expose_secret(),
        process.database_url.expose_secret(),
        twilio.auth_token.expose_secret(),
        cfg.ultravox.data_connection_secrets[0].expose_secret(),
        cfg.ultravox.tool_api_keys[0].expose_secret(),
        delivery.api_key.as_ref().unwrap().expose_secret(),
        delivery.signing_secret.as_ref().unwrap().expose_secret(),
        cfg.ops.metrics_token.as_deref().unwrap(),
        tenant.tool_api_key.as_ref().unwrap().expose_secret(),
        tenant.jambonz.as_ref().unwrap().password.expose_secret(),
        tenant.ultravox.api_key.expose_secret(),
        frontend.api_key.as_ref().unwrap().expose_secret(),
        frontend.signing_secret.as_ref().unwrap().expose_secret(),
    ];
    assert_eq!(
        held,
        [
            DATABASE_URL,
            DATABASE_URL,
            "twilio-auth-token-7f3a",
            "data-connection-secret-7f3a",
            "global-tool-api-key-7f3a",
            "delivery-api-key-7f3a",
            "delivery-signing-secret-7f3a",
            "metrics-token-7f3a-0123",
            "tenant-tool-api-key-7f3a",
            "jambonz-password-7f3a",
            "ultravox-api-key-7f3a",
            "tenant-frontend-key-7f3a",
            "tenant-signing-secret-7f3a",
        ]
    );

    // …and none of them is in what `{:?}` prints, the password of the database URL included.
    let debug = format!("{cfg:?}\n{process:?}");
    assert!(debug.contains("riverside"), "{debug}");
    assert!(debug.contains("REDACTED"), "{debug}");
    for secret in held.iter().copied().chain(["db-password-7f3a"]) {
        assert!(!debug.contains(secret), "{secret:?} in:\n{debug}");
    }
}
