"""Text: the text tokenizer, the task-span and box grammar, and the span tokens.

    from utamoe.text.tokenizer import train_text_tokenizer, load_text_tokenizer, SpecialIds
    from utamoe.text.boxes import format_box, parse_box        # the one box grammar
    from utamoe.text.spans import parse_response, format_span  # task spans in answers
    from utamoe.text.span_tokens import add_span_tokens, decode_answer

The bottom of the stack with the task registry: nothing here imports a model.
"""
