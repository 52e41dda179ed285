//! Tables as wrangler prints them (cli-table3's default box style, no colours).

/// Terminal columns a string takes: wide emoji count 2, variation selectors 0.
fn width(s: &str) -> usize {
    s.chars()
        .map(|c| match c as u32 {
            0xFE00..=0xFE0F | 0x200D => 0,
            0x1F000..=0x1FAFF | 0x2600..=0x27BF | 0x2B00..=0x2BFF => 2,
            _ => 1,
        })
        .sum()
}

/// `head` and `rows` as a box table, one line per row, rows separated by rules, ending
/// with a newline.
pub fn render(head: &[&str], rows: &[Vec<String>]) -> String {
    let n = head.len();
    let mut widths: Vec<usize> = head.iter().map(|h| width(h)).collect();
    for r in rows {
        for (i, cell) in r.iter().enumerate().take(n) {
            widths[i] = widths[i].max(cell.lines().map(width).max().unwrap_or(0));
        }
    }
    let rule = |l: &str, m: &str, r: &str| {
        let mut s = String::from(l);
        for (i, w) in widths.iter().enumerate() {
            if i > 0 {
                s.push_str(m);
            }
            s.push_str(&"─".repeat(w + 2));
        }
        s.push_str(r);
        s.push('\n');
        s
    };
    // A row of cells, a cell's lines side by side (cli-table3 prints multi-line cells so).
    let line = |cells: &[String]| {
        let height = cells
            .iter()
            .map(|c| c.lines().count().max(1))
            .max()
            .unwrap_or(1);
        let mut s = String::new();
        for l in 0..height {
            s.push('│');
            for (i, w) in widths.iter().enumerate() {
                let c = cells.get(i).and_then(|c| c.lines().nth(l)).unwrap_or("");
                s.push(' ');
                s.push_str(c);
                s.push_str(&" ".repeat(w - width(c) + 1));
                s.push('│');
            }
            s.push('\n');
        }
        s
    };
    let mut out = rule("┌", "┬", "┐");
    out.push_str(&line(
        &head.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
    ));
    for r in rows {
        out.push_str(&rule("├", "┼", "┤"));
        out.push_str(&line(r));
    }
    out.push_str(&rule("└", "┴", "┘"));
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn multi_line_cells_span_lines() {
        let t = super::render(&["a"], &[vec!["x\nyy".into()]]);
        assert_eq!(t, "┌────┐\n│ a  │\n├────┤\n│ x  │\n│ yy │\n└────┘\n");
    }

    #[test]
    fn boxes_like_cli_table3() {
        let t = super::render(
            &["name", "status"],
            &[vec!["0001_init.sql".into(), "✅".into()]],
        );
        assert_eq!(
            t,
            "┌───────────────┬────────┐\n\
             │ name          │ status │\n\
             ├───────────────┼────────┤\n\
             │ 0001_init.sql │ ✅     │\n\
             └───────────────┴────────┘\n"
        );
    }
}
