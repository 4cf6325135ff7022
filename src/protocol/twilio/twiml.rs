//! A TwiML builder (reference §3.1, §4.2; names as in the official
//! `twilio.twiml.voice_response`): the verbs lifeline answers Twilio with, written as
//! well-formed, escaped XML.

use std::fmt;
use std::io;

use quick_xml::Writer;
use quick_xml::events::{BytesDecl, BytesText, Event};

use super::TwilioError;
use super::url::split_url;

/// An HTTP method for a TwiML callback attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HttpMethod {
    /// `GET`
    #[expect(dead_code, reason = "every callback lifeline asks for is a POST")]
    Get,
    /// `POST`
    Post,
}

impl fmt::Display for HttpMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Get => "GET",
            Self::Post => "POST",
        })
    }
}

/// A `<Number>` `statusCallbackEvent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(
    not(test),
    expect(dead_code, reason = "dials take Twilio's default events")
)]
pub(crate) enum CallProgressEvent {
    /// `initiated`
    Initiated,
    /// `ringing`
    Ringing,
    /// `answered`
    Answered,
    /// `completed`
    Completed,
}

impl CallProgressEvent {
    fn as_str(self) -> &'static str {
        match self {
            Self::Initiated => "initiated",
            Self::Ringing => "ringing",
            Self::Answered => "answered",
            Self::Completed => "completed",
        }
    }
}

/// An absolute `http`/`https` URL, as TwiML given to a live call requires (Twilio error 15004).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AbsoluteUrl(String);

impl AbsoluteUrl {
    /// Accepts `url` if it is `http://` or `https://` followed by a host.
    pub fn parse(url: &str) -> Result<Self, TwilioError> {
        let absolute = split_url(url).is_some_and(|parts| {
            let scheme = parts.scheme.to_ascii_lowercase();
            (scheme == "https://" || scheme == "http://") && !parts.host.is_empty()
        });
        if absolute {
            Ok(Self(url.to_owned()))
        } else {
            Err(TwilioError::NotAbsoluteUrl(url.to_owned()))
        }
    }

    /// The URL.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A TwiML `<Response>` document.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Response {
    /// The verbs, run in order.
    pub verbs: Vec<Verb>,
}

/// One verb of a [`Response`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verb {
    /// `<Connect>` holding one `<Stream>` (a bidirectional media stream, e.g. to Ultravox).
    Connect(Stream),
    /// `<Dial>`
    Dial(Dial),
    /// `<Say>`
    Say(Say),
    /// `<Hangup/>`
    Hangup,
    /// `<Record>`
    Record(Record),
    /// `<Pause>`
    Pause(Pause),
    /// `<Redirect>`
    Redirect(Redirect),
    /// `<Gather>` of keypad digits, with an optional `<Say>` prompt inside.
    Gather(Gather),
}

/// `<Gather input="dtmf">`: the transfer's acceptance gate on the on-call person's leg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Gather {
    /// `action`: requested with `Digits` when a key is pressed.
    pub action: String,
    /// `method` of the action request.
    pub method: Option<HttpMethod>,
    /// `numDigits`
    pub num_digits: u32,
    /// `timeout`: seconds to wait for a key.
    pub timeout: u32,
    /// The prompt said while listening.
    pub say: Option<Say>,
}

/// `<Stream>` inside `<Connect>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stream {
    /// `url`: the `wss://` URL to stream to.
    pub url: String,
    /// `name`
    pub name: Option<String>,
    /// `statusCallback`
    pub status_callback: Option<String>,
    /// `statusCallbackMethod`
    pub status_callback_method: Option<HttpMethod>,
    /// `<Parameter name value/>` children, passed to the stream's `start` message.
    pub parameters: Vec<(String, String)>,
}

impl Stream {
    /// A stream to `url` with no other attribute.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            name: None,
            status_callback: None,
            status_callback_method: None,
            parameters: Vec::new(),
        }
    }
}

/// `<Dial>` with `<Number>` children.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Dial {
    /// `action`: requested when the dialled leg ends, with the outcome.
    pub action: AbsoluteUrl,
    /// `method` of the action request (Twilio's default: POST).
    pub method: Option<HttpMethod>,
    /// `timeout`: seconds to let the number ring (Twilio's default: 30).
    pub timeout: Option<u32>,
    /// `callerId`: the number shown to the person dialled.
    pub caller_id: Option<String>,
    /// `answerOnBridge`: keep the caller hearing ringing until the callee answers.
    pub answer_on_bridge: Option<bool>,
    /// `timeLimit`: maximum call length in seconds (Twilio's default: 14400).
    pub time_limit: Option<u32>,
    /// The numbers to dial (all at once).
    pub numbers: Vec<Number>,
}

impl Dial {
    /// Dials `number`, reporting the outcome to `action`.
    pub fn new(action: AbsoluteUrl, number: Number) -> Self {
        Self {
            action,
            method: None,
            timeout: None,
            caller_id: None,
            answer_on_bridge: None,
            time_limit: None,
            numbers: vec![number],
        }
    }
}

/// `<Number>` inside `<Dial>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Number {
    /// The phone number to dial (E.164).
    pub number: String,
    /// `url`: TwiML played to the callee before connecting (the whisper).
    pub url: Option<String>,
    /// `method` of the whisper request.
    pub method: Option<HttpMethod>,
    /// `statusCallback`: where this leg's progress events go.
    pub status_callback: Option<String>,
    /// `statusCallbackEvent`: which events to send (Twilio's default: `completed`).
    pub status_callback_event: Vec<CallProgressEvent>,
    /// `machineDetection="Enable"`: Twilio sends `AnsweredBy` with the whisper request.
    pub machine_detection: bool,
}

impl Number {
    /// `number` with no other attribute.
    pub fn new(number: impl Into<String>) -> Self {
        Self {
            number: number.into(),
            url: None,
            method: None,
            status_callback: None,
            status_callback_event: Vec::new(),
            machine_detection: false,
        }
    }
}

/// `<Say>`
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Say {
    /// What to say.
    pub text: String,
    /// `voice`, e.g. `Polly.Joanna`.
    pub voice: Option<String>,
    /// `language`, e.g. `en-US`.
    pub language: Option<String>,
}

impl Say {
    /// Says `text` in the default voice.
    pub fn new(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            voice: None,
            language: None,
        }
    }
}

/// `<Record>`
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    /// `action`: requested when the recording ends.
    pub action: String,
    /// `maxLength`, seconds.
    pub max_length: u32,
    /// `playBeep`
    pub play_beep: bool,
    /// `transcribe`
    pub transcribe: Option<bool>,
    /// `recordingStatusCallback`
    pub recording_status_callback: Option<String>,
}

/// `<Pause>`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pause {
    /// `length`, seconds.
    pub length: u32,
}

/// `<Redirect>`: continue with the TwiML at `url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Redirect {
    /// The URL of the next TwiML document.
    pub url: String,
    /// `method`
    pub method: Option<HttpMethod>,
}

macro_rules! verb_from {
    ($($kind:ident),*) => {
        $(impl From<$kind> for Verb {
            fn from(verb: $kind) -> Self {
                Verb::$kind(verb)
            }
        })*
    };
}
verb_from!(Dial, Say, Record, Pause, Redirect, Gather);

impl Response {
    /// An empty `<Response/>`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a verb.
    pub fn verb(mut self, verb: impl Into<Verb>) -> Self {
        self.verbs.push(verb.into());
        self
    }

    /// The document, starting with `<?xml version="1.0" encoding="UTF-8"?>` like the official
    /// library. Every value is escaped; characters XML 1.0 cannot carry at all (control
    /// characters other than tab, line feed and carriage return) are dropped, so that the
    /// document is always well-formed.
    pub fn to_xml(&self) -> String {
        let mut writer = Writer::new(Vec::new());
        self.write(&mut writer)
            .expect("writing XML to a Vec cannot fail");
        String::from_utf8(writer.into_inner()).expect("the XML writer only writes UTF-8 strings")
    }

    fn write(&self, w: &mut Writer<Vec<u8>>) -> io::Result<()> {
        w.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
        w.create_element("Response")
            .write_inner_content(|w| self.verbs.iter().try_for_each(|verb| write_verb(w, verb)))?;
        Ok(())
    }
}

/// Attribute list of one element; `None` values are left out.
#[derive(Default)]
struct Attrs(Vec<(&'static str, String)>);

impl Attrs {
    fn set(mut self, name: &'static str, value: impl fmt::Display) -> Self {
        self.0.push((name, xml_chars(&value.to_string())));
        self
    }

    fn opt(self, name: &'static str, value: Option<impl fmt::Display>) -> Self {
        match value {
            Some(value) => self.set(name, value),
            None => self,
        }
    }

    fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(name, value)| (*name, value.as_str()))
    }
}

/// `text` without the characters XML 1.0 cannot represent, even escaped.
fn xml_chars(text: &str) -> String {
    text.chars()
        .filter(|&c| {
            matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}')
                || c >= '\u{10000}'
        })
        .collect()
}

type XmlWriter = Writer<Vec<u8>>;

/// Writes `<name attrs>text</name>`.
fn text_element(w: &mut XmlWriter, name: &str, attrs: Attrs, text: &str) -> io::Result<()> {
    let text = xml_chars(text);
    w.create_element(name)
        .with_attributes(attrs.pairs())
        .write_text_content(BytesText::new(&text))?;
    Ok(())
}

/// Writes `<name attrs/>`.
fn empty_element(w: &mut XmlWriter, name: &str, attrs: Attrs) -> io::Result<()> {
    w.create_element(name)
        .with_attributes(attrs.pairs())
        .write_empty()?;
    Ok(())
}

fn write_verb(w: &mut XmlWriter, verb: &Verb) -> io::Result<()> {
    match verb {
        Verb::Connect(stream) => {
            w.create_element("Connect")
                .write_inner_content(|w| write_stream(w, stream))?;
            Ok(())
        }
        Verb::Dial(dial) => write_dial(w, dial),
        Verb::Say(say) => text_element(
            w,
            "Say",
            Attrs::default()
                .opt("voice", say.voice.as_ref())
                .opt("language", say.language.as_ref()),
            &say.text,
        ),
        Verb::Hangup => empty_element(w, "Hangup", Attrs::default()),
        Verb::Record(record) => empty_element(
            w,
            "Record",
            Attrs::default()
                .set("action", &record.action)
                .set("maxLength", record.max_length)
                .set("playBeep", record.play_beep)
                .opt("transcribe", record.transcribe)
                .opt(
                    "recordingStatusCallback",
                    record.recording_status_callback.as_ref(),
                ),
        ),
        Verb::Pause(pause) => {
            empty_element(w, "Pause", Attrs::default().set("length", pause.length))
        }
        Verb::Redirect(redirect) => text_element(
            w,
            "Redirect",
            Attrs::default().opt("method", redirect.method),
            &redirect.url,
        ),
        Verb::Gather(gather) => {
            let attrs = Attrs::default()
                .set("action", &gather.action)
                .set("input", "dtmf")
                .opt("method", gather.method)
                .set("numDigits", gather.num_digits)
                .set("timeout", gather.timeout);
            match &gather.say {
                None => empty_element(w, "Gather", attrs),
                Some(say) => {
                    w.create_element("Gather")
                        .with_attributes(attrs.pairs())
                        .write_inner_content(|w| write_verb(w, &Verb::Say(say.clone())))?;
                    Ok(())
                }
            }
        }
    }
}

fn write_stream(w: &mut XmlWriter, stream: &Stream) -> io::Result<()> {
    let attrs = Attrs::default()
        .set("url", &stream.url)
        .opt("name", stream.name.as_ref())
        .opt("statusCallback", stream.status_callback.as_ref())
        .opt("statusCallbackMethod", stream.status_callback_method);
    if stream.parameters.is_empty() {
        return empty_element(w, "Stream", attrs);
    }
    w.create_element("Stream")
        .with_attributes(attrs.pairs())
        .write_inner_content(|w| {
            stream.parameters.iter().try_for_each(|(name, value)| {
                empty_element(
                    w,
                    "Parameter",
                    Attrs::default().set("name", name).set("value", value),
                )
            })
        })?;
    Ok(())
}

fn write_dial(w: &mut XmlWriter, dial: &Dial) -> io::Result<()> {
    let attrs = Attrs::default()
        .set("action", dial.action.as_str())
        .opt("method", dial.method)
        .opt("timeout", dial.timeout)
        .opt("callerId", dial.caller_id.as_ref())
        .opt("answerOnBridge", dial.answer_on_bridge)
        .opt("timeLimit", dial.time_limit);
    w.create_element("Dial")
        .with_attributes(attrs.pairs())
        .write_inner_content(|w| dial.numbers.iter().try_for_each(|n| write_number(w, n)))?;
    Ok(())
}

fn write_number(w: &mut XmlWriter, number: &Number) -> io::Result<()> {
    let events = (!number.status_callback_event.is_empty()).then(|| {
        let names: Vec<&str> = number
            .status_callback_event
            .iter()
            .map(|event| event.as_str())
            .collect();
        names.join(" ")
    });
    let attrs = Attrs::default()
        .opt("url", number.url.as_ref())
        .opt("method", number.method)
        .opt("statusCallback", number.status_callback.as_ref())
        .opt("statusCallbackEvent", events)
        .opt(
            "machineDetection",
            number.machine_detection.then_some("Enable"),
        );
    text_element(w, "Number", attrs, &number.number)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::twilio::test_support::{tree, url};

    const DECLARATION: &str = r#"<?xml version="1.0" encoding="UTF-8"?>"#;

    fn assert_same_twiml(ours: &Response, official: &str) {
        let xml = ours.to_xml();
        assert!(xml.starts_with(DECLARATION), "{xml}");
        assert!(official.starts_with(DECLARATION), "{official}");
        assert_eq!(
            tree(&xml),
            tree(official),
            "\nours:     {xml}\nofficial: {official}"
        );
    }

    fn bridge() -> Response {
        Response::new().verb(Verb::Connect(Stream::new(
            "wss://example.ultravox.ai/calls/abc/join",
        )))
    }

    fn transfer() -> Response {
        Response::new().verb(Dial {
            timeout: Some(20),
            ..Dial::new(
                url("https://example.com/dial-action"),
                Number::new("+15558675310"),
            )
        })
    }

    #[test]
    fn reference_6_6_bridge() {
        let official = include_str!("../../../fixtures/twilio/bridge.xml");
        assert_same_twiml(&bridge(), official);
        let other = Response::new().verb(Verb::Connect(Stream::new("wss://example.ultravox.ai/x")));
        assert_ne!(tree(&other.to_xml()), tree(official));
    }

    #[test]
    fn reference_6_6_transfer() {
        let official = include_str!("../../../fixtures/twilio/transfer.xml");
        assert_same_twiml(&transfer(), official);
        let Some(Verb::Dial(dial)) = transfer().verbs.pop() else {
            unreachable!()
        };
        let longer = Response::new().verb(Dial {
            timeout: Some(30),
            ..dial.clone()
        });
        assert_ne!(tree(&longer.to_xml()), tree(official));
        let with_method = Response::new().verb(Dial {
            method: Some(HttpMethod::Post),
            ..dial
        });
        assert_ne!(tree(&with_method.to_xml()), tree(official));
    }

    // The lib-*.xml fixtures were produced with the official `twilio` 9.13.0 package
    // (`twilio.twiml.voice_response`), to pin every attribute name we emit.

    #[test]
    fn official_dial_with_every_attribute() {
        let whisper = Number {
            url: Some("https://svc.example/twilio/whisper?session=abc123".into()),
            method: Some(HttpMethod::Post),
            status_callback: Some("https://svc.example/twilio/status".into()),
            status_callback_event: vec![
                CallProgressEvent::Initiated,
                CallProgressEvent::Ringing,
                CallProgressEvent::Answered,
                CallProgressEvent::Completed,
            ],
            ..Number::new("+15558675310")
        };
        let action = url("https://svc.example/twilio/dial-action?session=abc123&leg=1");
        let mut dial = Dial {
            method: Some(HttpMethod::Post),
            timeout: Some(20),
            caller_id: Some("+15005550006".into()),
            answer_on_bridge: Some(true),
            time_limit: Some(3600),
            ..Dial::new(action, whisper)
        };
        dial.numbers.push(Number::new("+15558675311"));
        let official = include_str!("../../../fixtures/twilio/lib-dial-full.xml");
        assert_same_twiml(&Response::new().verb(dial.clone()), official);
        dial.answer_on_bridge = Some(false);
        assert_ne!(tree(&Response::new().verb(dial).to_xml()), tree(official));
    }

    #[test]
    fn official_stream_with_parameters() {
        let stream = Stream {
            name: Some("ultravox".into()),
            status_callback: Some("https://svc.example/twilio/stream-status".into()),
            status_callback_method: Some(HttpMethod::Post),
            parameters: vec![
                (
                    "callSid".into(),
                    "CA11111111111111111111111111111111".into(),
                ),
                ("tenant".into(), "clinic-1".into()),
            ],
            ..Stream::new("wss://example.ultravox.ai/calls/abc/join?token=x&y=1")
        };
        let official = include_str!("../../../fixtures/twilio/lib-stream-full.xml");
        assert_same_twiml(
            &Response::new().verb(Verb::Connect(stream.clone())),
            official,
        );
        let mut reordered = stream;
        reordered.parameters.reverse();
        let ours = Response::new().verb(Verb::Connect(reordered));
        assert_ne!(tree(&ours.to_xml()), tree(official));
    }

    #[test]
    fn official_say_pause_record_redirect_hangup() {
        let response = Response::new()
            .verb(Say {
                voice: Some("Polly.Joanna".into()),
                language: Some("en-US".into()),
                ..Say::new("Sorry, nobody answered. Please leave a message after the tone.")
            })
            .verb(Pause { length: 1 })
            .verb(Record {
                action: "https://svc.example/twilio/recorded?session=abc123".into(),
                max_length: 120,
                play_beep: true,
                transcribe: Some(false),
                recording_status_callback: Some(
                    "https://svc.example/twilio/recording-status".into(),
                ),
            })
            .verb(Redirect {
                url: "https://svc.example/twilio/next?session=abc123".into(),
                method: Some(HttpMethod::Post),
            })
            .verb(Say::new("Goodbye."))
            .verb(Verb::Hangup);
        let official = include_str!("../../../fixtures/twilio/lib-fallback.xml");
        assert_same_twiml(&response, official);
        let mut shorter = response.clone();
        shorter.verbs.pop();
        assert_ne!(tree(&shorter.to_xml()), tree(official));
    }

    const HOSTILE: &str = "a < b & c \"d\" 'e' ]]> f";

    #[test]
    fn official_hostile_values_are_escaped_the_same_way() {
        let number = Number {
            url: Some("https://svc.example/w?a=1&b=]]>".into()),
            ..Number::new("+1555]]>&<")
        };
        let dial = Dial {
            timeout: Some(20),
            caller_id: Some("+1500<&>\"'".into()),
            ..Dial::new(
                url("https://svc.example/twilio/dial-action?session=<x>&q=\"'"),
                number,
            )
        };
        let response = Response::new()
            .verb(Say {
                voice: Some("Polly.Joanna".into()),
                language: Some("en-US".into()),
                ..Say::new(HOSTILE)
            })
            .verb(dial)
            .verb(Redirect {
                url: "https://svc.example/next?a=<1>&b=\"'".into(),
                method: None,
            });
        let official = include_str!("../../../fixtures/twilio/lib-hostile.xml");
        assert_same_twiml(&response, official);
    }

    #[test]
    fn hostile_values_round_trip_unchanged() {
        let nasty = |prefix: &str| format!("{prefix}{HOSTILE}\t\n\r\n</Response>&amp;");
        let stream = Stream {
            name: Some(nasty("name")),
            parameters: vec![(nasty("k"), nasty("v"))],
            ..Stream::new(nasty("wss://x/"))
        };
        let dial = Dial {
            caller_id: Some(nasty("+1")),
            ..Dial::new(url(&nasty("https://x/")), Number::new(nasty("+2")))
        };
        let response = Response::new()
            .verb(Verb::Connect(stream))
            .verb(dial)
            .verb(Say::new(nasty("say ")));
        let xml = response.to_xml();
        assert!(!xml.contains("]]>"), "{xml}");
        let root = tree(&xml);
        assert_eq!(root.name, "Response");
        let [connect, dial, say] = &root.children[..] else {
            panic!("three verbs: {root:?}")
        };
        let stream = &connect.children[0];
        assert_eq!(stream.attrs["url"], nasty("wss://x/"));
        assert_eq!(stream.attrs["name"], nasty("name"));
        assert_eq!(stream.children[0].attrs["name"], nasty("k"));
        assert_eq!(stream.children[0].attrs["value"], nasty("v"));
        assert_eq!(dial.attrs["action"], nasty("https://x/"));
        assert_eq!(dial.attrs["callerId"], nasty("+1"));
        assert_eq!(dial.children[0].text, nasty("+2"));
        assert_eq!(say.text, nasty("say "));
    }

    #[test]
    fn characters_xml_cannot_carry_are_dropped() {
        let response = Response::new().verb(Say {
            voice: Some("v\u{1}1".into()),
            ..Say::new("a\u{0}b\u{1b}c\u{FFFE}d é 😀")
        });
        let root = tree(&response.to_xml());
        assert_eq!(root.children[0].text, "abcd é 😀");
        assert_eq!(root.children[0].attrs["voice"], "v1");
    }

    #[test]
    fn empty_response() {
        let xml = Response::new().to_xml();
        assert!(xml.starts_with(DECLARATION));
        let root = tree(&xml);
        assert_eq!((root.name.as_str(), root.children.len()), ("Response", 0));
    }

    #[test]
    fn dial_action_must_be_absolute() {
        for good in [
            "https://svc.example/a?b=1",
            "http://svc.example",
            "HTTPS://x:8443/",
        ] {
            assert_eq!(url(good).as_str(), good);
        }
        for bad in [
            "/twilio/dial-action",
            "svc.example/twilio",
            "ftp://svc.example/x",
            "https:///path",
            "https://",
            "",
        ] {
            assert!(
                matches!(AbsoluteUrl::parse(bad), Err(TwilioError::NotAbsoluteUrl(_))),
                "{bad}"
            );
        }
    }
}
