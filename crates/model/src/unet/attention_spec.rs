//! The reference project's `"start.end.heads"` attention grammar
//! (`Diffusion_model/src/unet/models.py::eval_expression`), parsed strictly.
//!
//! Levels are 1-indexed and inclusive; an empty `end` means the last level; `""` means no
//! attention. "3..2" on five levels puts 2-head attention on levels 3, 4 and 5. Unlike the
//! reference, which wrapped Python's negative indexing and empty ranges silently, a level 0,
//! `start > end` or a level beyond the network is an error.

use crate::error::ModelError;

/// Heads per level (`None` = no attention at that level) for a network of `levels` levels.
pub fn parse_attention(spec: &str, levels: usize) -> Result<Vec<Option<usize>>, ModelError> {
    let spec = spec.trim();
    let mut heads = vec![None; levels];
    if spec.is_empty() {
        return Ok(heads);
    }
    let bad = |why: String| {
        ModelError::Config(format!(
            "attention = \"{spec}\" (grammar \"start.end.heads\", levels 1..={levels}): {why}"
        ))
    };
    let parts: Vec<&str> = spec.split('.').map(str::trim).collect();
    let [start, end, n_heads] = parts[..] else {
        return Err(bad(format!(
            "expected 3 dot-separated fields, found {}",
            parts.len()
        )));
    };
    let number = |field: &str, name: &str| {
        field
            .parse::<usize>()
            .map_err(|_| bad(format!("{name} \"{field}\" is not a non-negative integer")))
    };
    let start = number(start, "start")?;
    let end = if end.is_empty() {
        levels
    } else {
        number(end, "end")?
    };
    let n_heads = number(n_heads, "heads")?;
    if start == 0 || start > end || end > levels {
        return Err(bad(format!(
            "levels {start}..={end} are not a non-empty range within 1..={levels}"
        )));
    }
    if n_heads == 0 {
        return Err(bad("heads must be ≥ 1".into()));
    }
    heads[start - 1..end].fill(Some(n_heads));
    Ok(heads)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_end_runs_to_the_last_level() {
        // As in the reference's grammar: "3..2" = 2 heads on levels 3, 4, 5 of five.
        assert_eq!(
            parse_attention("3..2", 5).unwrap(),
            vec![None, None, Some(2), Some(2), Some(2)]
        );
    }

    #[test]
    fn closed_range_and_whitespace() {
        assert_eq!(
            parse_attention(" 2.3.4 ", 5).unwrap(),
            vec![None, Some(4), Some(4), None, None]
        );
        assert_eq!(parse_attention("1.1.1", 2).unwrap(), vec![Some(1), None]);
    }

    #[test]
    fn empty_means_no_attention() {
        assert_eq!(parse_attention("", 3).unwrap(), vec![None, None, None]);
        assert_eq!(parse_attention("  ", 3).unwrap(), vec![None, None, None]);
    }

    #[test]
    fn malformed_or_out_of_range_specs_are_rejected() {
        for spec in [
            "3", "3.2", "3..2.1", "a..2", "3.x.2", "3..", "-1..2", "0..2", "4.3.2", "3.6.2",
            "6..2", "3..0", "..2",
        ] {
            let e = parse_attention(spec, 5).expect_err(spec);
            assert!(e.to_string().contains(spec.trim()), "{spec}: {e}");
        }
    }
}
