"""consent_svc: account, product-agreement and payment consents per user and bank (schema `consent`)."""
