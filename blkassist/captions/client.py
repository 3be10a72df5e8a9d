"""Captions from a vision-language model behind vLLM's OpenAI-compatible chat API.

The openai client gives timeouts and retries with exponential backoff (connection errors,
408/429/5xx); a semaphore bounds how many requests are in flight.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

import openai

from blkassist.captions.prompt import FewShotPrompt, image_data_url
from blkassist.errors import BlkAssistError

log = logging.getLogger(__name__)


class CaptionServerError(BlkAssistError):
    """The captioning server cannot be used; the message says which and how to fix it."""


class VllmCaptioner:
    def __init__(
        self,
        base_url: str,
        model: str,
        prompt: FewShotPrompt,
        *,
        api_key: str | None = None,
        concurrency: int = 4,
        timeout_s: float = 120,
        retries: int = 3,
        max_tokens: int = 120,
        min_tokens: int = 5,
        temperature: float = 0.2,
        image_long_side: int = 512,
    ):
        self.base_url = base_url
        self.model = model
        self.prompt = prompt
        self.api_key = api_key
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.retries = retries
        self.max_tokens = max_tokens
        self.min_tokens = min_tokens
        self.temperature = temperature
        self.image_long_side = image_long_side

    def _client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=self.base_url,
            api_key=self.api_key or "not-needed",  # a server without a key accepts any
            timeout=self.timeout_s,
            max_retries=self.retries,
        )

    async def _check_server(self, client: openai.AsyncOpenAI) -> None:
        try:
            served = [model.id async for model in client.models.list()]
        except openai.APIConnectionError as error:
            raise CaptionServerError(
                f"cannot reach the captioning server at {self.base_url} ({error}); start it, "
                "or fix captions.vllm.base_url (null lets the workflow start one)"
            ) from None
        except openai.AuthenticationError:
            raise CaptionServerError(
                f"captioning server at {self.base_url} refused the API key (401); export "
                "its key in the environment variable that captions.vllm.api_key_env names"
            ) from None
        except openai.APIStatusError as error:
            raise CaptionServerError(
                f"captioning server at {self.base_url} answered {error.status_code} to "
                f"/models; is it a vLLM OpenAI-compatible server?"
            ) from None
        if self.model not in served:
            raise CaptionServerError(
                f"captioning server at {self.base_url} serves {served}, not "
                f"{self.model!r}; fix captions.vllm.model"
            )

    async def _caption(self, client, semaphore, image_path: str) -> str:
        async with semaphore:
            response = await client.chat.completions.create(
                model=self.model,
                messages=self.prompt.messages(image_data_url(image_path, self.image_long_side)),
                max_tokens=self.max_tokens,
                temperature=self.temperature,
                # vLLM's sampling extension: no caption ends before it has begun
                extra_body={"min_tokens": min(self.min_tokens, self.max_tokens)},
            )
        text = (response.choices[0].message.content or "").strip()
        if not text:
            raise CaptionServerError(f"{image_path}: the model returned an empty caption")
        return text

    async def _caption_all(
        self, image_paths: Sequence[str], on_caption: Callable[[int, str], Awaitable[None] | None]
    ) -> None:
        async with self._client() as client:
            await self._check_server(client)
            semaphore = asyncio.Semaphore(self.concurrency)

            async def one(index: int) -> None:
                try:
                    text = await self._caption(client, semaphore, image_paths[index])
                except openai.APIConnectionError as error:
                    raise CaptionServerError(
                        f"lost the captioning server at {self.base_url} after "
                        f"{self.retries} retries ({error})"
                    ) from None
                on_caption(index, text)

            await asyncio.gather(*(one(i) for i in range(len(image_paths))))

    def caption_all(
        self, image_paths: Sequence[str], on_caption: Callable[[int, str], None]
    ) -> None:
        """Caption every image; `on_caption(index, text)` is called as each one lands, so
        a crash keeps what was already written."""
        asyncio.run(self._caption_all(image_paths, on_caption))
