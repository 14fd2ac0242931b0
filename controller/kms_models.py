"""Pydantic models of the ETSI GS QKD 014 V1.1.1 data formats (§6, Tables 9-13).

Field names are the spec's, including its mixed case (``key_ID``, ``master_SAE_ID``). Request
models forbid unknown top-level fields so a misspelt field is a 400, not silently a default.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Status(BaseModel):
    """Status (Table 9): what the KME can deliver to a master/slave SAE pair."""

    source_KME_ID: str
    target_KME_ID: str
    master_SAE_ID: str
    slave_SAE_ID: str
    key_size: int
    stored_key_count: int
    max_key_count: int
    max_key_per_request: int
    max_key_size: int
    min_key_size: int
    max_SAE_ID_count: int
    status_extension: dict[str, Any] | None = None


class KeyRequest(BaseModel):
    """Key request (Table 10); every field optional, an empty body means one default-size key."""

    model_config = ConfigDict(extra="forbid")

    number: int | None = Field(None, description="number of keys, default 1")
    size: int | None = Field(None, description="key size in bits, default key_size")
    additional_slave_SAE_IDs: list[str] | None = None
    extension_mandatory: list[dict[str, Any]] | None = None
    extension_optional: list[dict[str, Any]] | None = None


class KeyItem(BaseModel):
    """One key of a Key container: its UUID and its base64 material."""

    key_ID: str
    key_ID_extension: dict[str, Any] | None = None
    key: str
    key_extension: dict[str, Any] | None = None


class KeyContainer(BaseModel):
    """Key container (Table 11)."""

    keys: list[KeyItem]
    key_container_extension: dict[str, Any] | None = None


class KeyIDItem(BaseModel):
    """One entry of Key IDs."""

    model_config = ConfigDict(extra="forbid")

    key_ID: str
    key_ID_extension: dict[str, Any] | None = None


class KeyIDs(BaseModel):
    """Key IDs (Table 12): the IDs a slave SAE asks for."""

    model_config = ConfigDict(extra="forbid")

    key_IDs: list[KeyIDItem]
    key_IDs_extension: dict[str, Any] | None = None


class Error(BaseModel):
    """Error (Table 13); also the body of every 401 (the spec defines none, clients expect one)."""

    message: str
    details: list[dict[str, Any]] | None = None
