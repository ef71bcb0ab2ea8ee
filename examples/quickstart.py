from typing import Annotated

from pydantic import BaseModel

from extractkit import Extractor, Grounded, ZeroShot


class Invoice(BaseModel):
    issuer: Annotated[str, Grounded()]  # must occur in the document
    total: Annotated[float, Grounded()]


extractor = Extractor(Invoice, tiers=[ZeroShot(model="gpt-4o-mini")])  # OPENAI_BASE_URL / _API_KEY
result = extractor.extract("From: ACME Tools Ltd\nInvoice 7\nTotal due: 1,249.50 EUR")
print(result.tier, result.value, f"attempts={len(result.attempts)} cost={result.cost_usd}")
