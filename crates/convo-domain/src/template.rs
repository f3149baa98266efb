//! Automated-message templates and their placeholders.
//!
//! Templates name placeholders in braces; the set is closed, so a typo such as
//! `{contac_name}` is refused when the template is configured rather than sent
//! to a customer.

/// The placeholders a template may use.
pub const PLACEHOLDERS: [&str; 5] = ["company", "team", "contact_name", "agent_name", "campaign"];

/// The longest template or message text, in bytes.
pub const TEXT_BYTES_MAX: usize = 4096;

/// Values for the placeholders; a missing one is filled with an empty string.
#[derive(Debug, Default, Clone, Copy)]
pub struct Values<'a> {
    pub company: &'a str,
    pub team: &'a str,
    pub contact_name: &'a str,
    pub agent_name: &'a str,
    pub campaign: &'a str,
}

/// Checks a template's length and that every `{name}` is a known placeholder.
pub fn check(text: &str) -> Result<(), String> {
    if text.len() > TEXT_BYTES_MAX {
        return Err(format!("at most {TEXT_BYTES_MAX} bytes, found {}", text.len()));
    }
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let close = after.find('}').ok_or_else(|| "a '{' is never closed".to_string())?;
        let name = &after[..close];
        if !PLACEHOLDERS.contains(&name) {
            return Err(format!(
                "unknown placeholder {{{name}}}; known: {}",
                PLACEHOLDERS.map(|p| format!("{{{p}}}")).join(", ")
            ));
        }
        rest = &after[close + 1..];
    }
    Ok(())
}

/// Fills the placeholders of a checked template. An empty value takes the
/// spaces before it along, and a comma left dangling before punctuation, so
/// "¿Sigues ahí, {contact_name}?" reads "¿Sigues ahí?" for a nameless contact.
pub fn fill(text: &str, values: &Values<'_>) -> String {
    let mut out = String::with_capacity(text.len() + 32);
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            out.push_str(&rest[open..]);
            return out;
        };
        let value = match &after[..close] {
            "company" => values.company,
            "team" => values.team,
            "contact_name" => values.contact_name,
            "agent_name" => values.agent_name,
            "campaign" => values.campaign,
            // Unreachable for checked templates; keep the text as written.
            other => {
                out.push('{');
                out.push_str(other);
                out.push('}');
                rest = &after[close + 1..];
                continue;
            }
        };
        rest = &after[close + 1..];
        if value.is_empty() {
            let kept = out.trim_end_matches(' ').len();
            out.truncate(kept);
            if out.ends_with(',') && rest.chars().next().is_none_or(|c| c.is_ascii_punctuation()) {
                out.pop();
            } else if rest.starts_with(',') && (out.is_empty() || out.ends_with(['¿', '¡', '\n'])) {
                rest = rest[1..].trim_start_matches(' ');
            }
        } else {
            out.push_str(value);
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_checked_and_filled() {
        assert!(check("Hola {contact_name}, soy {agent_name} de {company}").is_ok());
        assert!(check("Hola {contac_name}").unwrap_err().contains("{contac_name}"));
        assert!(check("Hola {contact_name").is_err());
        let v = Values { company: "Acme", contact_name: "Ana", ..Values::default() };
        assert_eq!(
            fill("Hola {contact_name}, gracias por escribir a {company}.", &v),
            "Hola Ana, gracias por escribir a Acme."
        );
        let nameless = Values { company: "Acme", ..Values::default() };
        assert_eq!(fill("¿Sigues ahí, {contact_name}?", &nameless), "¿Sigues ahí?");
        assert_eq!(fill("Hola {contact_name}, bienvenido a {company}.", &nameless), "Hola, bienvenido a Acme.");
        assert_eq!(fill("{contact_name}, ¿cómo te fue?", &nameless), "¿cómo te fue?");
        assert_eq!(fill("¡Hola {contact_name}!", &nameless), "¡Hola!");
    }
}
