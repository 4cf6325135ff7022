//! A tenant whose Jambonz `session:new` ack cannot fit in one WebSocket frame is refused at
//! start: jambonz drops frames over `JAMBONES_WS_MAX_PAYLOAD` (24 KiB by default), so such a
//! tenant's every call would get no application. The size is that of the ack lifeline would
//! actually send — the verbs with the prompt rendered — at the longest values its template
//! variables can take (`ingress::jambonz::session_verbs::largest_session_ack`), not a guess from
//! the raw prompt: a short prompt can grow past the limit once filled, and a long one can still
//! fit.
//!
//! It lives here, beside the ack it measures, rather than in `config`: the configuration layer
//! sits below the adapters and cannot render their verbs. `lifeline serve` runs it right after
//! loading the configuration, and refuses to start (exit 2) as for any other bad setting.

use crate::config::{Config, Tenant};
use crate::ingress::jambonz::session_verbs::largest_session_ack;
use crate::protocol::jambonz::MAX_FRAME_BYTES;

/// The problems of every tenant whose session ack can exceed one frame (empty: all fit).
pub fn session_ack_problems(config: &Config) -> Vec<String> {
    let mut problems = Vec::new();
    for tenant in &config.tenants {
        check_session_ack(tenant, &mut problems);
    }
    problems
}

/// Adds a problem when `tenant` is reachable through Jambonz and its session ack can exceed
/// one frame.
fn check_session_ack(tenant: &Tenant, problems: &mut Vec<String>) {
    if tenant.jambonz.is_none() {
        // Not reachable on the Jambonz socket: its prompt only travels to Ultravox over HTTP.
        return;
    }
    let size = largest_session_ack(tenant);
    if size > MAX_FRAME_BYTES {
        let what = if tenant.ultravox.agent_id.is_some() {
            "the llm verb with every template variable at its longest"
        } else {
            "the llm verb with ultravox.system_prompt rendered at the longest values of its variables"
        };
        problems.push(format!(
            "tenant {:?}: its Jambonz session ack can reach {size} bytes ({what}), over the \
             {MAX_FRAME_BYTES}-byte frame limit of jambonz (JAMBONES_WS_MAX_PAYLOAD), which drops \
             larger frames: every call of this tenant would fail; shorten the prompt or use an \
             Ultravox agent (ultravox.agent_id)",
            tenant.id
        ));
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::session_ack_problems;
    use crate::config::{Config, ProcessSettings};
    use crate::ingress::jambonz::session_verbs::session_verbs;
    use crate::prompt_context::CallFacts;
    use crate::protocol::jambonz::{MAX_FRAME_BYTES, ack};

    fn build(prompt: &str, jambonz: bool) -> Result<Config, Vec<String>> {
        let process = ProcessSettings {
            database_url: "sqlite://x.db".into(),
            bind: "127.0.0.1".parse().unwrap(),
            port: 0,
            config_path: None,
            database_max_connections: 16,
            database_worker_connections: 4,
        };
        let jambonz = if jambonz {
            "[tenants.jambonz]\nusername = \"riverside\"\npassword = \"riverside-secret-1\"\n"
        } else {
            ""
        };
        let toml = format!(
            "[[tenants]]\nid = \"riverside\"\nname = \"Riverside Emergency Vet\"\n\
             numbers = [\"+15083728299\"]\n{jambonz}[tenants.transfer]\n\
             primary = \"+15557654321\"\n[tenants.ultravox]\napi_key = \"k\"\n\
             system_prompt = {}\n",
            toml::Value::String(prompt.into())
        );
        let config = Config::build(&process, Some((&toml, Path::new("t.toml"))), &|_| None)
            .map_err(|e| e.0)?;
        let problems = session_ack_problems(&config);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(problems)
        }
    }

    /// A prompt whose variables grow when filled.
    fn growing_prompt(copies: usize) -> String {
        "Caller: {{caller_phone_digits}} on {{current_datetime}}.\n".repeat(copies)
    }

    #[test]
    fn a_prompt_that_only_overflows_once_rendered_is_refused_with_its_size() {
        // Short as written (about 55 bytes a line), over 24 KiB once every variable is filled.
        let prompt = growing_prompt(190);
        assert!(prompt.len() < 11 * 1024, "{}", prompt.len());
        let problems = build(&prompt, true).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        let problem = &problems[0];
        assert!(problem.starts_with("tenant \"riverside\": its Jambonz session ack can reach "));
        assert!(problem.contains(&format!("over the {MAX_FRAME_BYTES}-byte frame limit")));
        let size: usize = problem
            ["tenant \"riverside\": its Jambonz session ack can reach ".len()..]
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(size > MAX_FRAME_BYTES, "{problem}");
    }

    #[test]
    fn a_long_prompt_that_fits_is_accepted_and_twilio_only_tenants_are_not_limited() {
        // 20 KiB as written: more than the old 16 KiB rule allowed, and still one frame.
        let prompt = "Be kind and brief. ".repeat(20 * 1024 / 19);
        let config = build(&prompt, true).expect("fits in one frame");
        let tenant = &config.tenants[0];
        let real = ack(
            "rRHPHXrWfEb98ccve4dQy2",
            Some(session_verbs(
                tenant,
                &CallFacts {
                    call_sid: "9fb35c28-9688-4531-943c-e280b04f3adf",
                    from: Some("+15083084809"),
                    to: Some("+15083728299"),
                },
                chrono::Utc::now(),
            )),
        );
        assert!(real.len() <= MAX_FRAME_BYTES, "{}", real.len());
        // Not on Jambonz: the prompt goes to Ultravox over HTTP, no frame limit applies.
        build(&growing_prompt(400), false).expect("no Jambonz, no frame limit");
    }

    /// The bound is at least every real ack, whatever the call and the time.
    #[test]
    fn the_bound_covers_real_acks() {
        let config = build(&growing_prompt(100), true).expect("fits");
        let tenant = &config.tenants[0];
        let bound = crate::ingress::jambonz::session_verbs::largest_session_ack(tenant);
        let start = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .to_utc();
        for (i, from) in [Some("+13787387837"), Some("+447911123456"), None]
            .into_iter()
            .enumerate()
        {
            for step in 0..(365 * 2) {
                let now = start + chrono::TimeDelta::hours(step * 12 + i as i64);
                let real = ack(
                    "rRHPHXrWfEb98ccve4dQy2",
                    Some(session_verbs(
                        tenant,
                        &CallFacts {
                            call_sid: "9fb35c28-9688-4531-943c-e280b04f3adf",
                            from,
                            to: Some("+15083728299"),
                        },
                        now,
                    )),
                );
                assert!(real.len() <= bound, "{} > {bound} at {now}", real.len());
            }
        }
    }
}
