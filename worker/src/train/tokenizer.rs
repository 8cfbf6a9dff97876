//! The tiny model's word-level `tokenizer.json`: one token per word of the procedural captions, after
//! `<pad>` (0), `</s>` (1) and `<unk>` (2), which sit where umT5's tokenizer has them. Text is lower-cased
//! and everything but letters becomes a space, so "A Red, circle!" reads as `a red circle`.

use serde_json::{json, Value};

pub const SPECIAL: [&str; 3] = ["<pad>", "</s>", "<unk>"];

/// The JSON for a vocabulary of `words` (sorted and deduplicated by the caller or not; the order given
/// is the id order after the special tokens).
pub fn tokenizer_json(words: &[&str]) -> Value {
    let mut vocab = serde_json::Map::new();
    for (id, token) in SPECIAL.iter().chain(words.iter()).enumerate() {
        vocab.entry(token.to_string()).or_insert(json!(id));
    }
    let added: Vec<Value> = SPECIAL
        .iter()
        .enumerate()
        .map(|(id, t)| {
            json!({"id": id, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": true})
        })
        .collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Lowercase"},
            {"type": "Replace", "pattern": {"Regex": "[^a-z]+"}, "content": " "}
        ]},
        "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "</s>", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "</s>", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 0}}, {"SpecialToken": {"id": "</s>", "type_id": 0}}],
            "special_tokens": {"</s>": {"id": "</s>", "ids": [1], "tokens": ["</s>"]}}
        },
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    })
}

/// `tokenizer_config.json`: the pad and end tokens, and the text length the model was trained with.
pub fn tokenizer_config(text_len: usize) -> Value {
    json!({"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>", "model_max_length": text_len})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tokenizer::PromptTokenizer;

    #[test]
    fn words_map_to_ids_and_end_with_eos() {
        let json = serde_json::to_vec(&tokenizer_json(&["a", "red", "circle"])).unwrap();
        let tok = PromptTokenizer::from_json(&json, "test").unwrap();
        let batch = tok.encode(&["A red, CIRCLE!", "a blue circle", ""], 6).unwrap();
        assert_eq!(batch.input_ids[0], vec![3, 4, 5, 1, 0, 0]);
        assert_eq!(batch.input_ids[1], vec![3, 2, 5, 1, 0, 0]);
        assert_eq!(batch.input_ids[2], vec![1, 0, 0, 0, 0, 0]);
        assert_eq!(batch.seq_lens(), vec![4, 4, 1]);
    }
}
