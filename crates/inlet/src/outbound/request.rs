//! Send and broadcast requests: parsed field by field from the JSON a client
//! posts, so every rejection names the field and says what is wrong
//! (`400 {code, field, detail}`), and only a [`SendSpec`] / [`BroadcastSpec`]
//! that the Graph API can take leaves this module ("parse, don't validate").
//!
//! The `<type>` object is Meta's object for that type, in WhatsApp's shape
//! (`{"body": …}` for text, `{"id"|"link", "caption"?, "filename"?}` for
//! media, …); [`crate::outbound::wire`] translates it for Messenger and
//! Instagram. Limits checked here are the ones Meta documents (sources
//! beside each); anything subtler is left to Meta, whose error is then
//! classified and recorded.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::model::Channel;

/// Most recipients one broadcast may have.
pub const MAX_BROADCAST_RECIPIENTS: usize = 100_000;
/// Longest accepted idempotency key.
pub const MAX_IDEMPOTENCY_KEY: usize = 200;

/// Whether `id` can be an outbound id: 1 to 200 letters, digits, `-` or
/// `_` (UUIDs, and the ids other systems give commands on the stream).
pub fn is_outbound_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 200
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A rejected request: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{field}: {detail}")]
pub struct Invalid {
    /// Stable machine code: `invalid_body`, `missing_field`,
    /// `invalid_field`, `unsupported`.
    pub code: &'static str,
    /// The field, as a path into the body (`text.body`, `recipients[3]`).
    pub field: String,
    /// What is wrong, naming the field.
    pub detail: String,
}

impl Invalid {
    fn new(code: &'static str, field: &str, detail: impl Into<String>) -> Self {
        Self {
            code,
            field: field.to_string(),
            detail: format!("`{field}`: {}", detail.into()),
        }
    }

    fn missing(field: &str) -> Self {
        Self::new("missing_field", field, "is required")
    }

    fn bad_field(field: &str, detail: impl Into<String>) -> Self {
        Self::new("invalid_field", field, detail)
    }

    fn unsupported(field: &str, detail: impl Into<String>) -> Self {
        Self::new("unsupported", field, detail)
    }
}

/// The message types the send API accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageType {
    /// Free-form text.
    Text,
    /// An approved WhatsApp template.
    Template,
    /// Image by id or link.
    Image,
    /// Document by id or link.
    Document,
    /// Audio by id or link.
    Audio,
    /// Video by id or link.
    Video,
    /// Buttons or a list.
    Interactive,
    /// An emoji reaction to a message.
    Reaction,
}

impl MessageType {
    /// Every type, in the order the API documents them.
    pub const ALL: [MessageType; 8] = [
        MessageType::Text,
        MessageType::Template,
        MessageType::Image,
        MessageType::Document,
        MessageType::Audio,
        MessageType::Video,
        MessageType::Interactive,
        MessageType::Reaction,
    ];

    /// The name used in requests, storage and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageType::Text => "text",
            MessageType::Template => "template",
            MessageType::Image => "image",
            MessageType::Document => "document",
            MessageType::Audio => "audio",
            MessageType::Video => "video",
            MessageType::Interactive => "interactive",
            MessageType::Reaction => "reaction",
        }
    }

    /// Parses a type name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// Whether the type carries media (it then also takes a token of the
    /// sender's lower media budget).
    pub fn is_media(self) -> bool {
        matches!(
            self,
            MessageType::Image | MessageType::Document | MessageType::Audio | MessageType::Video
        )
    }
}

/// What kind of id a recipient is, which decides the wire field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecipientKind {
    /// A WhatsApp phone number (`wa_id`), sent as `to`.
    Phone,
    /// A WhatsApp business-scoped user id (`US.13491208655302741918`),
    /// sent as `recipient`: in `to` Meta answers 200 and drops the message.
    Bsuid,
    /// A Messenger page-scoped id or Instagram-scoped id.
    ScopedId,
}

/// A validated single send.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SendSpec {
    /// Product to send through.
    pub channel: Channel,
    /// Sending `phone_number_id` (WhatsApp) or Page / Instagram account id.
    pub from: String,
    /// Recipient id, normalized (phone numbers without `+`).
    pub to: String,
    /// What kind of id `to` is.
    pub recipient_kind: RecipientKind,
    /// Message type.
    #[serde(rename = "type")]
    pub message_type: MessageType,
    /// The `<type>` object as given (validated).
    pub content: Value,
    /// Provider id of the message replied to (WhatsApp `context`).
    pub reply_to: Option<String>,
    /// Messenger/Instagram message tag (`HUMAN_AGENT`, …).
    pub tag: Option<String>,
    /// Client key: the same key again returns the same outbound id.
    pub idempotency_key: Option<String>,
}

impl SendSpec {
    /// Parses and validates a `POST /api/messages` body.
    pub fn parse(body: &[u8]) -> Result<SendSpec, Invalid> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| Invalid::new("invalid_body", "body", format!("is not valid JSON: {e}")))?;
        let obj = value
            .as_object()
            .ok_or_else(|| Invalid::new("invalid_body", "body", "must be a JSON object"))?;
        Self::from_object(obj)
    }

    /// Validates an already parsed body.
    pub fn from_object(obj: &Map<String, Value>) -> Result<SendSpec, Invalid> {
        let channel = channel_field(obj)?;
        let from = id_field(obj, "from")?;
        let to_raw = string_field(obj, "to")?;
        let (to, recipient_kind) = recipient(channel, &to_raw, "to")?;
        let type_name = string_field(obj, "type")?;
        let message_type = MessageType::parse(&type_name).ok_or_else(|| {
            Invalid::bad_field(
                "type",
                format!(
                    "{type_name:?} is not one of {}",
                    MessageType::ALL.map(MessageType::as_str).join(", ")
                ),
            )
        })?;
        let content = obj
            .get(message_type.as_str())
            .ok_or_else(|| Invalid::missing(message_type.as_str()))?;
        validate_content(channel, message_type, content)?;
        let reply_to = optional_string(obj, "reply_to")?;
        if let Some(r) = &reply_to {
            if r.is_empty() || r.len() > 512 {
                return Err(Invalid::bad_field(
                    "reply_to",
                    "must be a provider message id of 1 to 512 characters",
                ));
            }
            if channel != Channel::Whatsapp {
                return Err(Invalid::unsupported(
                    "reply_to",
                    "replies with a quoted message are supported on WhatsApp only",
                ));
            }
            // Meta: a reply context cannot be used on a reaction
            // (contextual-replies page).
            if message_type == MessageType::Reaction {
                return Err(Invalid::unsupported(
                    "reply_to",
                    "a reaction cannot carry a reply context",
                ));
            }
        }
        let tag = optional_string(obj, "tag")?;
        if let Some(t) = &tag {
            // Message tags (Messenger Platform policy): Instagram takes
            // HUMAN_AGENT only.
            let allowed: &[&str] = match channel {
                Channel::Whatsapp => &[],
                Channel::Messenger => &[
                    "HUMAN_AGENT",
                    "CONFIRMED_EVENT_UPDATE",
                    "POST_PURCHASE_UPDATE",
                    "ACCOUNT_UPDATE",
                ],
                Channel::Instagram => &["HUMAN_AGENT"],
            };
            if !allowed.contains(&t.as_str()) {
                return Err(Invalid::bad_field(
                    "tag",
                    if allowed.is_empty() {
                        "message tags exist on Messenger and Instagram only".to_string()
                    } else {
                        format!("must be one of {}", allowed.join(", "))
                    },
                ));
            }
        }
        let idempotency_key = idempotency_key(obj)?;
        Ok(SendSpec {
            channel,
            from,
            to,
            recipient_kind,
            message_type,
            content: content.clone(),
            reply_to,
            tag,
            idempotency_key,
        })
    }

    /// Whether the message is free-form (anything but a template): on
    /// WhatsApp it needs an open customer-service window.
    pub fn is_free_form(&self) -> bool {
        self.message_type != MessageType::Template
    }

    /// A short text for the conversation timeline: the body, a caption, the
    /// reaction emoji, the interactive body; `None` for templates.
    pub fn timeline_text(&self) -> Option<String> {
        let c = &self.content;
        let s = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
        match self.message_type {
            MessageType::Text => s(c.get("body")),
            MessageType::Image
            | MessageType::Document
            | MessageType::Video
            | MessageType::Audio => s(c.get("caption")),
            MessageType::Reaction => s(c.get("emoji")),
            MessageType::Interactive => s(c.get("body").and_then(|b| b.get("text"))),
            MessageType::Template => None,
        }
    }
}

/// A validated broadcast: one template to many WhatsApp recipients.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BroadcastSpec {
    /// Product (WhatsApp).
    pub channel: Channel,
    /// Sending `phone_number_id`.
    pub from: String,
    /// The template object, frozen as given.
    pub template: Value,
    /// Recipients, normalized, duplicates removed (first occurrence kept).
    pub recipients: Vec<(String, RecipientKind)>,
    /// How many duplicates were dropped.
    pub duplicates: usize,
    /// Client key: the same key again returns the same broadcast.
    pub idempotency_key: Option<String>,
}

impl BroadcastSpec {
    /// Parses and validates a `POST /api/broadcasts` body.
    pub fn parse(body: &[u8]) -> Result<BroadcastSpec, Invalid> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| Invalid::new("invalid_body", "body", format!("is not valid JSON: {e}")))?;
        let obj = value
            .as_object()
            .ok_or_else(|| Invalid::new("invalid_body", "body", "must be a JSON object"))?;
        let channel = channel_field(obj)?;
        if channel != Channel::Whatsapp {
            return Err(Invalid::unsupported(
                "channel",
                "broadcasts are WhatsApp template sends",
            ));
        }
        let from = id_field(obj, "from")?;
        let template = obj
            .get("template")
            .ok_or_else(|| Invalid::missing("template"))?;
        validate_template(template, "template")?;
        let list = obj
            .get("recipients")
            .ok_or_else(|| Invalid::missing("recipients"))?
            .as_array()
            .ok_or_else(|| Invalid::bad_field("recipients", "must be an array of recipient ids"))?;
        if list.is_empty() || list.len() > MAX_BROADCAST_RECIPIENTS {
            return Err(Invalid::bad_field(
                "recipients",
                format!("must hold 1 to {MAX_BROADCAST_RECIPIENTS} recipients"),
            ));
        }
        let mut seen = std::collections::HashSet::with_capacity(list.len());
        let mut recipients = Vec::with_capacity(list.len());
        for (i, r) in list.iter().enumerate() {
            let field = format!("recipients[{i}]");
            let raw = r
                .as_str()
                .ok_or_else(|| Invalid::bad_field(&field, "must be a string"))?;
            let (id, kind) = recipient(channel, raw, &field)?;
            if seen.insert(id.clone()) {
                recipients.push((id, kind));
            }
        }
        let duplicates = list.len() - recipients.len();
        Ok(BroadcastSpec {
            channel,
            from,
            template: template.clone(),
            recipients,
            duplicates,
            idempotency_key: idempotency_key(obj)?,
        })
    }
}

/// Parses the API's channel name (`facebook` is Messenger).
pub fn parse_channel(s: &str) -> Option<Channel> {
    match s {
        "whatsapp" => Some(Channel::Whatsapp),
        "facebook" | "messenger" => Some(Channel::Messenger),
        "instagram" => Some(Channel::Instagram),
        _ => None,
    }
}

fn channel_field(obj: &Map<String, Value>) -> Result<Channel, Invalid> {
    let name = string_field(obj, "channel")?;
    parse_channel(&name).ok_or_else(|| {
        Invalid::bad_field(
            "channel",
            format!("{name:?} is not one of whatsapp, facebook, instagram"),
        )
    })
}

fn string_field(obj: &Map<String, Value>, field: &str) -> Result<String, Invalid> {
    match obj.get(field) {
        None | Some(Value::Null) => Err(Invalid::missing(field)),
        Some(Value::String(s)) => Ok(s.trim().to_string()),
        Some(_) => Err(Invalid::bad_field(field, "must be a string")),
    }
}

fn optional_string(obj: &Map<String, Value>, field: &str) -> Result<Option<String>, Invalid> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.trim().to_string())),
        Some(_) => Err(Invalid::bad_field(field, "must be a string")),
    }
}

/// A numeric Graph node id (`phone_number_id`, Page id, IG account id).
fn id_field(obj: &Map<String, Value>, field: &str) -> Result<String, Invalid> {
    let id = match obj.get(field) {
        // Ids are strings in Meta's payloads; accept a JSON number too.
        Some(Value::Number(n)) if n.is_u64() => n.to_string(),
        _ => string_field(obj, field)?,
    };
    if id.is_empty() || id.len() > 32 || !id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Invalid::bad_field(
            field,
            "must be the numeric id of the sending phone number or page",
        ));
    }
    Ok(id)
}

fn idempotency_key(obj: &Map<String, Value>) -> Result<Option<String>, Invalid> {
    let key = optional_string(obj, "idempotency_key")?;
    if let Some(k) = &key {
        if k.is_empty() || k.len() > MAX_IDEMPOTENCY_KEY || !k.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(Invalid::bad_field(
                "idempotency_key",
                format!("must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters"),
            ));
        }
    }
    Ok(key)
}

/// Whether `s` is a business-scoped user id: an ISO 3166 alpha-2 country
/// code, a period, then alphanumerics (`US.13491208655302741918`; Meta's
/// business-scoped user IDs page, as mirrored by Sinch and Connectly).
pub fn is_bsuid(s: &str) -> bool {
    let Some((cc, rest)) = s.split_once('.') else {
        return false;
    };
    cc.len() == 2
        && cc.bytes().all(|b| b.is_ascii_uppercase())
        && !rest.is_empty()
        && rest.len() <= 128
        && rest.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Normalizes a recipient id and tells what kind it is.
pub fn recipient(
    channel: Channel,
    raw: &str,
    field: &str,
) -> Result<(String, RecipientKind), Invalid> {
    let raw = raw.trim();
    match channel {
        Channel::Whatsapp => {
            if is_bsuid(raw) {
                return Ok((raw.to_string(), RecipientKind::Bsuid));
            }
            let digits = raw.strip_prefix('+').unwrap_or(raw);
            // E.164: at most 15 digits.
            if (6..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) {
                Ok((digits.to_string(), RecipientKind::Phone))
            } else {
                Err(Invalid::bad_field(
                    field,
                    "must be a phone number in international format (digits, optional +) \
                     or a business-scoped user id (CC.xxxx)",
                ))
            }
        }
        Channel::Messenger | Channel::Instagram => {
            if !raw.is_empty() && raw.len() <= 32 && raw.bytes().all(|b| b.is_ascii_digit()) {
                Ok((raw.to_string(), RecipientKind::ScopedId))
            } else {
                Err(Invalid::bad_field(
                    field,
                    "must be the numeric page-scoped (PSID) or Instagram-scoped (IGSID) id",
                ))
            }
        }
    }
}

fn object<'a>(v: &'a Value, field: &str) -> Result<&'a Map<String, Value>, Invalid> {
    v.as_object()
        .ok_or_else(|| Invalid::bad_field(field, "must be an object"))
}

fn text_at(
    obj: &Map<String, Value>,
    key: &str,
    field: &str,
    max_chars: usize,
    allow_empty: bool,
) -> Result<Option<String>, Invalid> {
    let path = format!("{field}.{key}");
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            let n = s.chars().count();
            if (n == 0 && !allow_empty) || n > max_chars {
                Err(Invalid::bad_field(
                    &path,
                    format!(
                        "must be a string of {} to {max_chars} characters",
                        if allow_empty { 0 } else { 1 }
                    ),
                ))
            } else {
                Ok(Some(s.clone()))
            }
        }
        Some(_) => Err(Invalid::bad_field(&path, "must be a string")),
    }
}

fn required_text(
    obj: &Map<String, Value>,
    key: &str,
    field: &str,
    max_chars: usize,
) -> Result<String, Invalid> {
    text_at(obj, key, field, max_chars, false)?
        .ok_or_else(|| Invalid::missing(&format!("{field}.{key}")))
}

/// Checks the `<type>` object against what Meta documents for it.
fn validate_content(channel: Channel, t: MessageType, content: &Value) -> Result<(), Invalid> {
    let field = t.as_str();
    let obj = object(content, field)?;
    match t {
        MessageType::Text => {
            // WhatsApp text bodies up to 4096 characters (research notes:
            // third-party, unverified); Messenger text up to 2000 (Send API
            // reference: "UTF-8 and has a 2000 character limit").
            let max = if channel == Channel::Whatsapp {
                4096
            } else {
                2000
            };
            required_text(obj, "body", field, max)?;
            if let Some(p) = obj.get("preview_url") {
                if !p.is_boolean() {
                    return Err(Invalid::bad_field(
                        "text.preview_url",
                        "must be true or false",
                    ));
                }
            }
        }
        MessageType::Template => {
            if channel != Channel::Whatsapp {
                return Err(Invalid::unsupported(
                    "type",
                    "templates are WhatsApp messages; Messenger and Instagram send text, media or interactive",
                ));
            }
            validate_template(content, field)?;
        }
        MessageType::Image | MessageType::Document | MessageType::Audio | MessageType::Video => {
            let id = text_at(obj, "id", field, 256, false)?;
            let link = text_at(obj, "link", field, 2048, false)?;
            // Inlet uploads these itself and sends by id (WhatsApp).
            let path = text_at(obj, "path", field, 1024, false)?;
            let url = text_at(obj, "url", field, 2048, false)?;
            let given = [&id, &link, &path, &url]
                .iter()
                .filter(|v| v.is_some())
                .count();
            if given != 1 {
                return Err(Invalid::bad_field(
                    field,
                    "must carry exactly one of `id` (an uploaded media id), `link` (a URL Meta fetches), \
                     `path` (a file under media.upload_dir) or `url` (a URL Inlet fetches and uploads)",
                ));
            }
            for (name, value) in [("link", &link), ("url", &url)] {
                if let Some(l) = value {
                    if !(l.starts_with("https://") || l.starts_with("http://")) {
                        return Err(Invalid::bad_field(
                            &format!("{field}.{name}"),
                            "must be an http(s) URL",
                        ));
                    }
                }
            }
            if (path.is_some() || url.is_some()) && channel != Channel::Whatsapp {
                return Err(Invalid::unsupported(
                    field,
                    "`path` and `url` are uploaded to WhatsApp; Messenger and Instagram send a `link`",
                ));
            }
            if let Some(p) = &path {
                upload_path(p).map_err(|why| Invalid::bad_field(&format!("{field}.path"), why))?;
                if upload_mime(t, p).is_none() {
                    return Err(Invalid::bad_field(
                        &format!("{field}.path"),
                        format!(
                            "a {} must be one of: {}",
                            t.as_str(),
                            upload_types(t)
                                .iter()
                                .map(|(ext, mime)| format!(".{ext} ({mime})"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ));
                }
            }
            // `caption` does not apply to audio, `filename` is for documents
            // only (Cloud API media messages).
            if obj.contains_key("caption") {
                if t == MessageType::Audio {
                    return Err(Invalid::unsupported(
                        "audio.caption",
                        "audio messages have no caption",
                    ));
                }
                text_at(obj, "caption", field, 1024, true)?;
            }
            if obj.contains_key("filename") {
                if t != MessageType::Document {
                    return Err(Invalid::unsupported(
                        &format!("{field}.filename"),
                        "only documents carry a file name",
                    ));
                }
                text_at(obj, "filename", field, 240, false)?;
            }
            if channel != Channel::Whatsapp && obj.contains_key("caption") {
                return Err(Invalid::unsupported(
                    &format!("{field}.caption"),
                    "Messenger and Instagram attachments have no caption; send a text message",
                ));
            }
        }
        MessageType::Interactive => validate_interactive(channel, obj)?,
        MessageType::Reaction => {
            if channel != Channel::Whatsapp {
                return Err(Invalid::unsupported(
                    "type",
                    "reactions are sent on WhatsApp only",
                ));
            }
            required_text(obj, "message_id", field, 512)?;
            // An empty emoji removes a reaction (whatsapp-api-js `Reaction`).
            match obj.get("emoji") {
                Some(Value::String(_)) => {}
                None => return Err(Invalid::missing("reaction.emoji")),
                Some(_) => return Err(Invalid::bad_field("reaction.emoji", "must be a string")),
            }
        }
    }
    Ok(())
}

/// The file types WhatsApp takes per media type, by extension (Cloud API
/// supported media types; see docs in `shared/research/outbound.md` §1.6):
/// image jpeg/png, video mp4/3gpp, audio aac/amr/mpeg/mp4/ogg (Opus), and
/// documents of the common office and text types.
pub fn upload_types(t: MessageType) -> &'static [(&'static str, &'static str)] {
    match t {
        MessageType::Image => &[
            ("jpg", "image/jpeg"),
            ("jpeg", "image/jpeg"),
            ("png", "image/png"),
        ],
        MessageType::Video => &[("mp4", "video/mp4"), ("3gp", "video/3gpp")],
        MessageType::Audio => &[
            ("aac", "audio/aac"),
            ("amr", "audio/amr"),
            ("mp3", "audio/mpeg"),
            ("m4a", "audio/mp4"),
            ("ogg", "audio/ogg"),
        ],
        MessageType::Document => &[
            ("pdf", "application/pdf"),
            ("txt", "text/plain"),
            ("doc", "application/msword"),
            (
                "docx",
                "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            ),
            ("xls", "application/vnd.ms-excel"),
            (
                "xlsx",
                "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            ),
            ("ppt", "application/vnd.ms-powerpoint"),
            (
                "pptx",
                "application/vnd.openxmlformats-officedocument.presentationml.presentation",
            ),
        ],
        _ => &[],
    }
}

/// The MIME type of a file to upload as `t`, from its extension; `None`
/// when WhatsApp does not take that type.
pub fn upload_mime(t: MessageType, file_name: &str) -> Option<&'static str> {
    let ext = file_name.rsplit_once('.')?.1.to_ascii_lowercase();
    upload_types(t)
        .iter()
        .find(|(e, _)| *e == ext)
        .map(|(_, mime)| *mime)
}

/// Whether a MIME type (a `Content-Type`, parameters ignored) is one
/// WhatsApp takes as `t`.
pub fn upload_mime_allowed(t: MessageType, content_type: &str) -> Option<&'static str> {
    let mime = content_type.split(';').next()?.trim().to_ascii_lowercase();
    upload_types(t)
        .iter()
        .find(|(_, m)| *m == mime)
        .map(|(_, m)| *m)
}

/// Checks a `path` of an outbound file: relative to `media.upload_dir`,
/// without `..`, so a request can name nothing outside that directory.
pub fn upload_path(path: &str) -> Result<(), &'static str> {
    let p = std::path::Path::new(path);
    if path.is_empty() || p.is_absolute() || path.starts_with('/') || path.starts_with('\\') {
        return Err("must be a path relative to media.upload_dir");
    }
    if p.components()
        .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err("must not contain `..` (or start with `.`)");
    }
    Ok(())
}

/// A template object: `name`, `language.code`, optional `components`
/// (Meta's template components page: `header`, `body`, `button`; a button
/// takes `sub_type` and `index` "0"–"2").
fn validate_template(v: &Value, field: &str) -> Result<(), Invalid> {
    let obj = object(v, field)?;
    required_text(obj, "name", field, 512)?;
    let lang_field = format!("{field}.language");
    let lang = obj
        .get("language")
        .ok_or_else(|| Invalid::missing(&lang_field))?;
    let lang = object(lang, &lang_field)?;
    required_text(lang, "code", &lang_field, 16)?;
    if let Some(components) = obj.get("components") {
        let cf = format!("{field}.components");
        let list = components
            .as_array()
            .ok_or_else(|| Invalid::bad_field(&cf, "must be an array"))?;
        for (i, c) in list.iter().enumerate() {
            let f = format!("{cf}[{i}]");
            let c = object(c, &f)?;
            let kind = required_text(c, "type", &f, 16)?;
            match kind.as_str() {
                "header" | "body" => {}
                "button" => {
                    required_text(c, "sub_type", &f, 32)?;
                    let index = match c.get("index") {
                        Some(Value::String(s)) => s.clone(),
                        Some(Value::Number(n)) => n.to_string(),
                        None => return Err(Invalid::missing(&format!("{f}.index"))),
                        Some(_) => {
                            return Err(Invalid::bad_field(
                                &format!("{f}.index"),
                                "must be \"0\" to \"2\"",
                            ))
                        }
                    };
                    if !matches!(index.as_str(), "0" | "1" | "2") {
                        return Err(Invalid::bad_field(
                            &format!("{f}.index"),
                            "must be \"0\" to \"2\"",
                        ));
                    }
                }
                other => {
                    return Err(Invalid::bad_field(
                        &format!("{f}.type"),
                        format!("{other:?} is not one of header, body, button"),
                    ))
                }
            }
            if let Some(p) = c.get("parameters") {
                if !p.is_array() {
                    return Err(Invalid::bad_field(
                        &format!("{f}.parameters"),
                        "must be an array",
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Interactive buttons (1–3, title ≤ 20, id ≤ 256) or a list (≤ 10
/// sections, ≤ 10 rows in all, button ≤ 20, row id/title/description ≤
/// 200/24/72): WhatsApp Node SDK ButtonObject, Meta's interactive list page,
/// whatsapp-api-js Row/ActionList. Messenger and Instagram take buttons only
/// (sent as quick replies).
fn validate_interactive(channel: Channel, obj: &Map<String, Value>) -> Result<(), Invalid> {
    let kind = required_text(obj, "type", "interactive", 32)?;
    let body = obj
        .get("body")
        .ok_or_else(|| Invalid::missing("interactive.body"))?;
    required_text(
        object(body, "interactive.body")?,
        "text",
        "interactive.body",
        1024,
    )?;
    let action = obj
        .get("action")
        .ok_or_else(|| Invalid::missing("interactive.action"))?;
    let action = object(action, "interactive.action")?;
    match kind.as_str() {
        "button" => {
            let buttons = action
                .get("buttons")
                .and_then(Value::as_array)
                .ok_or_else(|| Invalid::missing("interactive.action.buttons"))?;
            if buttons.is_empty() || buttons.len() > 3 {
                return Err(Invalid::bad_field(
                    "interactive.action.buttons",
                    "must hold 1 to 3 buttons",
                ));
            }
            for (i, b) in buttons.iter().enumerate() {
                let f = format!("interactive.action.buttons[{i}].reply");
                let reply = b.get("reply").ok_or_else(|| Invalid::missing(&f))?;
                let reply = object(reply, &f)?;
                required_text(reply, "id", &f, 256)?;
                required_text(reply, "title", &f, 20)?;
            }
        }
        "list" if channel == Channel::Whatsapp => {
            required_text(action, "button", "interactive.action", 20)?;
            let sections = action
                .get("sections")
                .and_then(Value::as_array)
                .ok_or_else(|| Invalid::missing("interactive.action.sections"))?;
            if sections.is_empty() || sections.len() > 10 {
                return Err(Invalid::bad_field(
                    "interactive.action.sections",
                    "must hold 1 to 10 sections",
                ));
            }
            let mut rows_total = 0;
            for (i, s) in sections.iter().enumerate() {
                let f = format!("interactive.action.sections[{i}]");
                let s = object(s, &f)?;
                let rows = s
                    .get("rows")
                    .and_then(Value::as_array)
                    .ok_or_else(|| Invalid::missing(&format!("{f}.rows")))?;
                for (j, r) in rows.iter().enumerate() {
                    let rf = format!("{f}.rows[{j}]");
                    let r = object(r, &rf)?;
                    required_text(r, "id", &rf, 200)?;
                    required_text(r, "title", &rf, 24)?;
                    text_at(r, "description", &rf, 72, true)?;
                }
                rows_total += rows.len();
            }
            if rows_total == 0 || rows_total > 10 {
                return Err(Invalid::bad_field(
                    "interactive.action.sections",
                    "must hold 1 to 10 rows in all",
                ));
            }
        }
        "list" => {
            return Err(Invalid::unsupported(
                "interactive.type",
                "Messenger and Instagram take button interactives only (sent as quick replies)",
            ))
        }
        other if channel == Channel::Whatsapp => {
            // Other WhatsApp interactive kinds (cta_url, flow, product, …)
            // are passed through for Meta to check.
            if other.is_empty() {
                return Err(Invalid::missing("interactive.type"));
            }
        }
        other => {
            return Err(Invalid::unsupported(
                "interactive.type",
                format!("{other:?}: Messenger and Instagram take button interactives only"),
            ))
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<SendSpec, Invalid> {
        SendSpec::parse(v.to_string().as_bytes())
    }

    fn text(to: &str) -> Value {
        json!({"channel": "whatsapp", "from": "200000000000002", "to": to,
               "type": "text", "text": {"body": "hello"}})
    }

    #[test]
    fn a_text_to_a_phone_number_is_sent_as_to() {
        let s = parse(text("+15550001111")).unwrap();
        assert_eq!(s.to, "15550001111", "the + is dropped");
        assert_eq!(s.recipient_kind, RecipientKind::Phone);
        assert_eq!(s.message_type, MessageType::Text);
        assert!(s.is_free_form());
        assert_eq!(s.timeline_text().as_deref(), Some("hello"));
    }

    #[test]
    fn a_bsuid_is_recognised() {
        let s = parse(text("US.13491208655302741918")).unwrap();
        assert_eq!(s.recipient_kind, RecipientKind::Bsuid);
        assert!(!is_bsuid("us.123"), "country code is upper case");
        assert!(!is_bsuid("USA.123"));
        assert!(!is_bsuid("US."));
        assert!(!is_bsuid("15550001111"));
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (json!([1]), "body", "invalid_body"),
            (
                json!({"from": "1", "to": "15550001111", "type": "text"}),
                "channel",
                "missing_field",
            ),
            (
                json!({"channel": "sms", "from": "1", "to": "1", "type": "text"}),
                "channel",
                "invalid_field",
            ),
            (
                json!({"channel": "whatsapp", "from": "abc", "to": "15550001111", "type": "text"}),
                "from",
                "invalid_field",
            ),
            (
                json!({"channel": "whatsapp", "from": "1", "to": "not a number", "type": "text"}),
                "to",
                "invalid_field",
            ),
            (
                json!({"channel": "whatsapp", "from": "1", "to": "15550001111", "type": "fax"}),
                "type",
                "invalid_field",
            ),
            (
                json!({"channel": "whatsapp", "from": "1", "to": "15550001111", "type": "text"}),
                "text",
                "missing_field",
            ),
            (
                json!({"channel": "whatsapp", "from": "1", "to": "15550001111", "type": "text", "text": {}}),
                "text.body",
                "missing_field",
            ),
            (
                json!({"channel": "whatsapp", "from": "1", "to": "15550001111", "type": "text", "text": {"body": ""}}),
                "text.body",
                "invalid_field",
            ),
            (
                json!({"channel": "whatsapp", "from": "1", "to": "15550001111", "type": "text", "text": {"body": "x".repeat(4097)}}),
                "text.body",
                "invalid_field",
            ),
            (
                json!({"channel": "facebook", "from": "1", "to": "4000000000000004", "type": "text", "text": {"body": "x".repeat(2001)}}),
                "text.body",
                "invalid_field",
            ),
            (
                json!({"channel": "whatsapp", "from": "1", "to": "15550001111", "type": "image", "image": {}}),
                "image",
                "invalid_field",
            ),
            (
                json!({"channel": "whatsapp", "from": "1", "to": "15550001111", "type": "image", "image": {"link": "ftp://x"}}),
                "image.link",
                "invalid_field",
            ),
            (
                json!({"channel": "whatsapp", "from": "1", "to": "15550001111", "type": "audio", "audio": {"id": "1", "caption": "x"}}),
                "audio.caption",
                "unsupported",
            ),
            (
                json!({"channel": "whatsapp", "from": "1", "to": "15550001111", "type": "image", "image": {"id": "1", "filename": "a.jpg"}}),
                "image.filename",
                "unsupported",
            ),
            (
                json!({"channel": "whatsapp", "from": "1", "to": "15550001111", "type": "template", "template": {"name": "hello"}}),
                "template.language",
                "missing_field",
            ),
            (
                json!({"channel": "whatsapp", "from": "1", "to": "15550001111", "type": "template", "template": {"name": "n", "language": {"code": "en"}, "components": [{"type": "button", "sub_type": "url", "index": "3"}]}}),
                "template.components[0].index",
                "invalid_field",
            ),
            (
                json!({"channel": "whatsapp", "from": "1", "to": "15550001111", "type": "reaction", "reaction": {"message_id": "wamid.X", "emoji": "👍"}, "reply_to": "wamid.Y"}),
                "reply_to",
                "unsupported",
            ),
            (
                json!({"channel": "facebook", "from": "1", "to": "4000000000000004", "type": "template", "template": {"name": "n", "language": {"code": "en"}}}),
                "type",
                "unsupported",
            ),
            (
                json!({"channel": "instagram", "from": "1", "to": "6000000000000007", "type": "text", "text": {"body": "x"}, "tag": "ACCOUNT_UPDATE"}),
                "tag",
                "invalid_field",
            ),
            (
                json!({"channel": "whatsapp", "from": "1", "to": "15550001111", "type": "text", "text": {"body": "x"}, "idempotency_key": "has space"}),
                "idempotency_key",
                "invalid_field",
            ),
        ];
        for (body, field, code) in cases {
            let err = parse(body.clone()).expect_err(&body.to_string());
            assert_eq!(err.field, field, "{body}: {err}");
            assert_eq!(err.code, code, "{body}: {err}");
            assert!(err.detail.contains(&format!("`{field}`")), "{}", err.detail);
        }
    }

    #[test]
    fn interactive_limits_follow_meta() {
        let buttons = |n: usize, title: &str| {
            json!({"channel": "whatsapp", "from": "1", "to": "15550001111", "type": "interactive",
                   "interactive": {"type": "button", "body": {"text": "Pick"},
                   "action": {"buttons": (0..n).map(|i| json!({"type": "reply", "reply": {"id": format!("b{i}"), "title": title}})).collect::<Vec<_>>()}}})
        };
        assert!(parse(buttons(3, "Yes")).is_ok());
        assert_eq!(
            parse(buttons(4, "Yes")).unwrap_err().field,
            "interactive.action.buttons"
        );
        assert_eq!(
            parse(buttons(1, &"x".repeat(21))).unwrap_err().field,
            "interactive.action.buttons[0].reply.title"
        );
        let list = json!({"channel": "whatsapp", "from": "1", "to": "15550001111", "type": "interactive",
            "interactive": {"type": "list", "body": {"text": "Pick"}, "action": {"button": "Slots",
            "sections": [{"title": "Tue", "rows": (0..11).map(|i| json!({"id": format!("r{i}"), "title": "10:00"})).collect::<Vec<_>>()}]}}});
        assert_eq!(
            parse(list).unwrap_err().field,
            "interactive.action.sections"
        );
    }

    #[test]
    fn broadcasts_dedupe_and_name_the_bad_recipient() {
        let body = json!({"channel": "whatsapp", "from": "200000000000002",
            "template": {"name": "promo", "language": {"code": "en_US"}},
            "recipients": ["15550001111", "+15550001111", "US.1349", "15550002222"]});
        let b = BroadcastSpec::parse(body.to_string().as_bytes()).unwrap();
        assert_eq!(b.recipients.len(), 3);
        assert_eq!(b.duplicates, 1);
        assert_eq!(
            b.recipients[1],
            ("US.1349".to_string(), RecipientKind::Bsuid)
        );
        let bad = json!({"channel": "whatsapp", "from": "1",
            "template": {"name": "promo", "language": {"code": "en_US"}},
            "recipients": ["15550001111", "nope"]});
        let err = BroadcastSpec::parse(bad.to_string().as_bytes()).unwrap_err();
        assert_eq!(err.field, "recipients[1]");
        let fb = json!({"channel": "facebook", "from": "1", "template": {}, "recipients": ["1"]});
        assert_eq!(
            BroadcastSpec::parse(fb.to_string().as_bytes())
                .unwrap_err()
                .field,
            "channel"
        );
    }

    #[test]
    fn media_by_path_or_url_is_checked_before_any_upload() {
        let media = |v: Value| {
            parse(
                json!({"channel": "whatsapp", "from": "1", "to": "15550001111", "type": "image", "image": v}),
            )
        };
        assert!(media(json!({"path": "catalog/kettle.jpg", "caption": "blue"})).is_ok());
        assert!(media(json!({"url": "https://example.com/kettle.png"})).is_ok());
        for (bad, field) in [
            (json!({"path": "/etc/passwd.jpg"}), "image.path"),
            (json!({"path": "../secret.jpg"}), "image.path"),
            (json!({"path": "./b.jpg"}), "image.path"),
            (json!({"path": "kettle.gif"}), "image.path"),
            (json!({"url": "ftp://x/y.jpg"}), "image.url"),
            (json!({"path": "a.jpg", "id": "1"}), "image"),
        ] {
            let err = media(bad.clone()).unwrap_err();
            assert_eq!(err.field, field, "{bad}");
        }
        let messenger = parse(
            json!({"channel": "facebook", "from": "1", "to": "2", "type": "image", "image": {"url": "https://x/y.jpg"}}),
        );
        assert_eq!(messenger.unwrap_err().field, "image");
        assert_eq!(
            upload_mime(MessageType::Audio, "note.OGG"),
            Some("audio/ogg")
        );
        assert_eq!(upload_mime(MessageType::Video, "clip.mov"), None);
        assert_eq!(
            upload_mime_allowed(MessageType::Image, "image/png; charset=binary"),
            Some("image/png")
        );
        assert_eq!(upload_mime_allowed(MessageType::Image, "image/webp"), None);
    }
}
