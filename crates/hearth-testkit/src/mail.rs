//! Mails as an SMTP capture stored them: headers, and the decoded body of
//! each leaf part (quoted-printable and base64 undone).

/// One captured mail.
#[derive(Debug, Clone)]
pub struct Mail {
    /// The whole message, with `\n` line ends.
    pub raw: String,
    headers: Vec<(String, String)>,
    /// `(content type, decoded body)` of each leaf part, or of the whole
    /// mail when it is not multipart.
    pub parts: Vec<(String, String)>,
}

impl Mail {
    pub fn parse(raw: &str) -> Self {
        let raw = raw.replace("\r\n", "\n");
        let (headers, body) = split_headers(&raw);
        let mut parts = Vec::new();
        collect_parts(&headers, body, &mut parts);
        Self {
            raw: raw.clone(),
            headers,
            parts,
        }
    }

    /// The first header of that name (case-insensitive), unfolded.
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// The decoded body of the first part of this content type.
    pub fn part(&self, content_type: &str) -> Option<&str> {
        self.parts
            .iter()
            .find(|(t, _)| t.eq_ignore_ascii_case(content_type))
            .map(|(_, b)| b.as_str())
    }

    /// The `text/plain` part.
    ///
    /// # Panics
    /// When there is none, showing the mail.
    pub fn text(&self) -> &str {
        self.part("text/plain")
            .unwrap_or_else(|| panic!("no text/plain part in:\n{}", self.raw))
    }

    /// The `text/html` part.
    ///
    /// # Panics
    /// When there is none, showing the mail.
    pub fn html(&self) -> &str {
        self.part("text/html")
            .unwrap_or_else(|| panic!("no text/html part in:\n{}", self.raw))
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn split_headers(text: &str) -> (Vec<(String, String)>, &str) {
    let (head, body) = text.split_once("\n\n").unwrap_or((text, ""));
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in head.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = headers.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
    }
    (headers, body)
}

fn collect_parts(headers: &[(String, String)], body: &str, parts: &mut Vec<(String, String)>) {
    let content_type = header(headers, "content-type").unwrap_or("text/plain");
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if mime.starts_with("multipart/") {
        let Some(boundary) = content_type
            .split(';')
            .find_map(|p| p.trim().strip_prefix("boundary="))
        else {
            parts.push((mime, body.to_owned()));
            return;
        };
        let delimiter = format!("--{}", boundary.trim_matches('"'));
        for chunk in body.split(&delimiter).skip(1) {
            if chunk.starts_with("--") {
                break;
            }
            let chunk = chunk.strip_prefix('\n').unwrap_or(chunk);
            let (part_headers, part_body) = split_headers(chunk);
            collect_parts(&part_headers, part_body, parts);
        }
        return;
    }
    let decoded = match header(headers, "content-transfer-encoding")
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("quoted-printable") => decode_quoted_printable(body),
        Some("base64") => {
            let compact: String = body.split_whitespace().collect();
            hearth_core::base64::decode(compact.trim_end_matches('='))
                .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                .unwrap_or_else(|_| body.to_owned())
        }
        _ => body.to_owned(),
    };
    parts.push((mime, decoded));
}

fn decode_quoted_printable(body: &str) -> String {
    let body = body.replace("=\n", "");
    let bytes = body.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'='
            && let Some(hex) = body.get(i + 1..i + 3)
            && let Ok(byte) = u8::from_str_radix(hex, 16)
        {
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_quoted_printable_and_base64_parts_are_decoded() {
        let raw = "To: a@example.org\r\nSubject: Hi\r\n there\r\nContent-Type: multipart/alternative; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nStra=C3=9Fe =\r\nend\r\n--b\r\nContent-Type: text/html\r\nContent-Transfer-Encoding: base64\r\n\r\nPGI+aGk8L2I+\r\n--b--\r\n";
        let mail = Mail::parse(raw);
        assert_eq!(mail.header("subject"), Some("Hi there"));
        assert_eq!(mail.text().trim(), "Straße end");
        assert_eq!(mail.html().trim(), "<b>hi</b>");
    }
}
