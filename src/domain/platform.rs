//! The platforms a call or a tool invocation comes from.

use serde::{Deserialize, Serialize};

/// The platform an invocation (or a call) came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    Jambonz,
    Twilio,
    Ultravox,
}

impl Platform {
    /// Every platform (a new one goes here too: `/metrics` registers its series at start).
    pub const ALL: [Platform; 3] = [Platform::Jambonz, Platform::Twilio, Platform::Ultravox];

    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Jambonz => "jambonz",
            Platform::Twilio => "twilio",
            Platform::Ultravox => "ultravox",
        }
    }

    /// The platform stored under `name` (the inverse of [`Platform::as_str`]).
    pub(crate) fn from_name(name: &str) -> Option<Self> {
        match name {
            "jambonz" => Some(Platform::Jambonz),
            "twilio" => Some(Platform::Twilio),
            "ultravox" => Some(Platform::Ultravox),
            _ => None,
        }
    }
}
