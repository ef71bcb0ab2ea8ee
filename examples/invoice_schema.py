"""The invoice schema used by the examples and the demo on the shared invoice corpus."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from pydantic import BaseModel, Field

from extractkit import Grounded


class Invoice(BaseModel):
    """Header fields of one invoice. Amounts are numbers without currency symbols."""

    issuer: Annotated[str, Grounded()] = Field(description="Company that issued the invoice")
    invoice_number: Annotated[str, Grounded()] = Field(description="The invoice's number or id")
    date: Annotated[dt.date, Grounded()] = Field(description="Issue date")
    amount: Annotated[float, Grounded()] = Field(description="Total to pay, taxes included")
    currency: str = Field(description="ISO 4217 code, e.g. EUR, USD, PLN", pattern=r"^[A-Z]{3}$")
