"""Builtin chat templates and their end-of-turn (stop) strings, by ``chat_format`` name.

They follow the Hugging Face convention: they emit ``bos_token`` themselves where the model
family uses one (every format except ``chatml``).
"""

from __future__ import annotations

_VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

#: Chat templates for models whose GGUF has none, by the registry's ``chat_format`` name.
BUILTIN_TEMPLATES: dict[str, str] = {
    # google/gemma-3-*-it: no system role; a system message is folded into the first user turn.
    "gemma": (
        "{{ bos_token }}"
        "{% if messages and messages[0]['role'] == 'system' %}"
        "{% set first_user_prefix = messages[0]['content'] + '\\n\\n' %}"
        "{% set loop_messages = messages[1:] %}"
        "{% else %}"
        "{% set first_user_prefix = '' %}"
        "{% set loop_messages = messages %}"
        "{% endif %}"
        "{% for message in loop_messages %}"
        "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate"
        " user/assistant/user/assistant/...') }}"
        "{% endif %}"
        "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
        "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') }}"
        "{{ message['content'] | trim }}"
        "{{ '<end_of_turn>\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
    ),
    # meta-llama/Llama-2-*-chat-hf: <<SYS>> block inside the first [INST].
    "llama-2": (
        "{% if messages and messages[0]['role'] == 'system' %}"
        "{% set loop_messages = messages[1:] %}"
        "{% set system_message = messages[0]['content'] %}"
        "{% else %}"
        "{% set loop_messages = messages %}"
        "{% set system_message = false %}"
        "{% endif %}"
        "{% for message in loop_messages %}"
        "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate"
        " user/assistant/user/assistant/...') }}"
        "{% endif %}"
        "{% if loop.index0 == 0 and system_message != false %}"
        "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n'"
        " + message['content'] %}"
        "{% else %}"
        "{% set content = message['content'] %}"
        "{% endif %}"
        "{% if message['role'] == 'user' %}"
        "{{ bos_token + '[INST] ' + content | trim + ' [/INST]' }}"
        "{% elif message['role'] == 'assistant' %}"
        "{{ ' ' + content | trim + ' ' + (eos_token or '</s>') }}"
        "{% endif %}"
        "{% endfor %}"
    ),
    # meta-llama/Meta-Llama-3-8B-Instruct.
    "llama-3": (
        "{% for message in messages %}"
        "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
        " + message['content'] | trim + '<|eot_id|>' %}"
        "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
        "{{ content }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}"
        "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
        "{% endif %}"
    ),
    # teknium/OpenHermes-2.5-Mistral-7B, Qwen: no BOS in the text.
    "chatml": (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
    # mistralai/Mistral-7B-Instruct-v0.2 ("v1" tokenizer template, system prompt in the first
    # [INST]); same text as llama.cpp's LLM_CHAT_TEMPLATE_MISTRAL_V1.
    "mistral-instruct": (
        "{% if messages and messages[0]['role'] == 'system' %}"
        "{% set system_message = messages[0]['content'] %}"
        "{% set loop_messages = messages[1:] %}"
        "{% else %}"
        "{% set loop_messages = messages %}"
        "{% endif %}"
        "{{ bos_token }}"
        "{% for message in loop_messages %}"
        "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('After the optional system message, conversation roles must"
        " alternate user/assistant/user/assistant/...') }}"
        "{% endif %}"
        "{% if message['role'] == 'user' %}"
        "{% if loop.first and system_message is defined %}"
        "{{ ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}"
        "{% else %}"
        "{{ ' [INST] ' + message['content'] + ' [/INST]' }}"
        "{% endif %}"
        "{% elif message['role'] == 'assistant' %}"
        "{{ ' ' + message['content'] + (eos_token or '</s>') }}"
        "{% else %}"
        "{{ raise_exception('Only user and assistant roles are supported, with the exception"
        " of an initial optional system message!') }}"
        "{% endif %}"
        "{% endfor %}"
    ),
    # lmsys Vicuna v1.1 (FastChat "vicuna_v1.1"; llama-cpp-python "vicuna").
    "vicuna": (
        "{% if messages and messages[0]['role'] == 'system' %}"
        "{% set system_message = messages[0]['content'] %}"
        "{% set loop_messages = messages[1:] %}"
        "{% else %}"
        '{% set system_message = "' + _VICUNA_SYSTEM + '" %}'
        "{% set loop_messages = messages %}"
        "{% endif %}"
        "{{ bos_token }}"
        "{% if system_message %}{{ system_message + ' ' }}{% endif %}"
        "{% for message in loop_messages %}"
        "{% if message['role'] == 'user' %}"
        "{{ 'USER: ' + message['content'] + ' ' }}"
        "{% elif message['role'] == 'assistant' %}"
        "{{ 'ASSISTANT: ' + message['content'] + (eos_token or '</s>') }}"
        "{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
    ),
    # HuggingFaceH4/zephyr-7b-beta.
    "zephyr": (
        "{{ bos_token }}"
        "{% for message in messages %}"
        "{% if message['role'] in ['system', 'user', 'assistant'] %}"
        "{{ '<|' + message['role'] + '|>\\n' + message['content']"
        " + (eos_token or '</s>') + '\\n' }}"
        "{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
    ),
    # microsoft/Phi-3-*-instruct; same text as llama.cpp's LLM_CHAT_TEMPLATE_PHI_3.
    "phi-3": (
        "{{ bos_token }}"
        "{% for message in messages %}"
        "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}"
    ),
}

#: End-of-turn strings per format: generation stops when the model writes one.
BUILTIN_STOPS: dict[str, list[str]] = {
    "gemma": ["<end_of_turn>"],
    "llama-2": ["</s>"],
    "llama-3": ["<|eot_id|>", "<|eom_id|>"],
    "chatml": ["<|im_end|>"],
    "mistral-instruct": ["</s>"],
    "vicuna": ["</s>"],
    "zephyr": ["</s>"],
    "phi-3": ["<|end|>", "<|endoftext|>"],
}
