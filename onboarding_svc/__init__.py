"""onboarding_svc: onboarding sessions and user profiles (schema `onboarding`)."""
